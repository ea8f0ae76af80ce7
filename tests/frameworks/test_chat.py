"""The one chat-messages rule (system, history, question), and that each front end keeps its own error sentences."""

from __future__ import annotations

import pytest

from block_attention.core.errors import InvalidRequestError
from block_attention.frameworks.chat import ChatParts, ChatShapeError, split_chat


def test_system_history_question() -> None:
    parts = split_chat([("system", "Be brief."), ("user", "Hi"), ("system", "Cite."), ("assistant", "Hello"),
                        ("user", "Who?")])
    assert parts == ChatParts("Be brief.\n\nCite.", ({"role": "user", "content": "Hi"},
                                                     {"role": "assistant", "content": "Hello"}), "Who?")
    assert split_chat([("user", "Q")]) == ChatParts(None, (), "Q")
    assert split_chat([("system", ""), ("user", "")]).system == ""  # an empty system message is kept as ""


@pytest.mark.parametrize("messages, problem, index", [
    ([], "no_messages", 0),
    ([("user", "Q"), ("assistant", "A")], "last_not_user", 1),
    ([(None, "tool output"), ("user", "Q")], "unsupported_role", 0),
    ([("user", "a"), ("system", "s"), (None, "x"), (None, "y"), ("user", "Q")], "unsupported_role", 2),
    ([(None, "x"), ("system", "Q")], "last_not_user", 1),  # the last message is checked first
])
def test_rules_and_their_order(messages: list, problem: str, index: int) -> None:
    with pytest.raises(ChatShapeError) as caught:
        split_chat(messages)
    assert (caught.value.problem, caught.value.index) == (problem, index)
    assert isinstance(caught.value, InvalidRequestError) and str(caught.value).endswith(".")


def test_require_question() -> None:
    assert split_chat([("user", "  ")]).question == "  "
    with pytest.raises(ChatShapeError) as caught:
        split_chat([(None, "x"), ("user", " \n")], require_question=True)
    assert caught.value.problem == "empty_question"  # before the unsupported message


def test_server_uses_it_with_its_sentences() -> None:
    from block_attention.serving.openai_format import RequestRejected, chat_request
    from block_attention.serving.schema import ChatCompletionRequest
    from block_attention.serving.settings import ServerSettings

    settings = ServerSettings()

    def request(*messages: tuple[str, str]) -> ChatCompletionRequest:
        return ChatCompletionRequest(messages=[{"role": r, "content": c} for r, c in messages])

    got = chat_request(request(("developer", "D"), ("system", "S"), ("user", "u"), ("assistant", "a"),
                               ("user", "Q")), settings)
    assert (got.system, got.history, got.question) == ("D\n\nS", ({"role": "user", "content": "u"},
                                                                  {"role": "assistant", "content": "a"}), "Q")
    assert chat_request(request(("system", ""), ("user", "Q")), settings).system is None
    cases = [((("user", "Q"), ("assistant", "A")), "The last message must come from the user (it is the question), "
              "got role 'assistant'; end `messages` with a user message."),
             ((("tool", "t"), ("user", " ")), "The last user message is empty; send the question as its content."),
             ((("tool", "t"), ("user", "Q")), "Messages with role 'tool' are not supported; send system, user and "
              "assistant messages only.")]
    for messages, sentence in cases:
        with pytest.raises(RequestRejected) as caught:
            chat_request(request(*messages), settings)
        assert (str(caught.value), caught.value.status, caught.value.param) == (sentence, 400, "messages")
