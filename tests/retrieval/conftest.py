"""Shared fixtures for the retrieval tests: the real default embedder (loaded once), a generated fact corpus,
and a guard that fails any test which tries to reach the network (loopback stays allowed)."""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_SRC = Path(__file__).resolve().parents[2] / "src"
try:  # the package may not be installed into the venv yet (src layout)
    import block_attention.retrieval  # noqa: F401
except ImportError:
    sys.path.insert(0, str(_SRC))

from block_attention.retrieval import Embedder, Retriever  # noqa: E402

# 30 facts about invented entities: (file name, fact sentence, question answered by that sentence).
FACTS: list[tuple[str, str, str]] = [
    ("glass-eel.txt", "The Velmorian glass-eel migrates every spring from Lake Odrith to the marshes of Quennport.",
     "Where does the Velmorian glass-eel migrate each spring?"),
    ("comet.md", "Astronomer Ilsa Draventhorpe discovered the comet Harrowind-7 in 1874 using a brass refractor.",
     "Which comet did Ilsa Draventhorpe discover?"),
    ("brindlemarsh.txt", "The town of Brindlemarsh is famous for its turnip-carving festival held on the first frost.",
     "What festival is the town of Brindlemarsh known for?"),
    ("zorquat.txt", "Zorquat is a board game played on a hexagonal grid with seventeen obsidian pieces per player.",
     "How many pieces does each player use in the game Zorquat?"),
    ("bridge.md", "The Tessaline Bridge over the river Umbravel was built from pink granite in 1602 by Orrick Vance.",
     "What stone was the Tessaline Bridge built from?"),
    ("pellin.txt", "Chef Mirabel Okonkwo-Lindqvist invented the saffron dumpling known as the golden pellin.",
     "Who invented the golden pellin dumpling?"),
    ("cable.txt", "The Krasnovar submarine cable links the islands of Ytterholm and Savu across 480 km of seabed.",
     "Which islands does the Krasnovar submarine cable connect?"),
    ("lyrebat.md", "The lyrebat of Mount Coralis imitates the sound of falling rain to attract moths at night.",
     "What sound does the lyrebat of Mount Coralis imitate?"),
    ("lemma.txt", "Professor Tobias Quillfeather proved a famous lemma about prime spirals in the winter of 1931.",
     "What did Professor Tobias Quillfeather prove?"),
    ("marrowgate.txt", "The Duchy of Marrowgate adopted a flag showing a silver heron on a field of dark green.",
     "Which animal appears on the flag of the Duchy of Marrowgate?"),
    ("xyphera.md", "Xyphera tea is brewed from the dried petals of a blue mountain orchid and tastes faintly of plum.",
     "What is Xyphera tea brewed from?"),
    ("airship.txt", "The cargo airship Halcyon Drift crashed into the Oskel glacier in 1923 after its engines froze.",
     "What happened to the cargo airship Halcyon Drift?"),
    ("symphony.txt", "Composer Renata Vostrikova wrote the Ninefold Symphony for an orchestra of forty cellos.",
     "For which instruments did Renata Vostrikova write the Ninefold Symphony?"),
    ("library.md", "The Pellucid Library of Zanthar holds eleven thousand scrolls written in mirror script.",
     "How many scrolls does the Pellucid Library of Zanthar hold?"),
    ("marathon.txt", "Runners in the Gallowmere Marathon must carry a lantern through the peat bogs after sunset.",
     "What must runners carry during the Gallowmere Marathon?"),
    ("quorl.txt", "The quorl fruit turns violet when ripe and is harvested only by moonlight on Tavish Island.",
     "When is the quorl fruit harvested?"),
    ("umbrella.md", "Inventor Bartholomew Nettlewick patented a clockwork umbrella that opens by itself when it rains.",
     "What did the inventor Bartholomew Nettlewick patent?"),
    ("amber.txt", "The Sarnoth Mines produced most of the world's blue amber until they flooded in 1888.",
     "Why did the Sarnoth Mines stop producing blue amber?"),
    ("aldermoor.txt", "Fenwick the Elder ruled the kingdom of Aldermoor for fifty-two years and built its first road.",
     "How long did Fenwick the Elder rule Aldermoor?"),
    ("dragonfly.md", "The wings of the Glimmerfen dragonfly glow orange for three days after it hatches.",
     "How long do the wings of the Glimmerfen dragonfly glow?"),
    ("trench.txt", "The research vessel Cormorant Dawn mapped the Velantine Trench to a depth of 9,412 metres.",
     "How deep is the Velantine Trench according to the Cormorant Dawn survey?"),
    ("pigment.txt", "Painter Odile Marchetti-Kross ground beetle shells to make her famous emerald green pigment.",
     "How did the painter Odile Marchetti-Kross make her green pigment?"),
    ("snedding.md", "The village of Upper Snedding elects a goat as its honorary mayor every leap year.",
     "Who serves as honorary mayor of Upper Snedding?"),
    ("thalrunic.txt", "Thalrunic script is written in spirals from the centre outward and has forty-one letters.",
     "How many letters are there in the Thalrunic script?"),
    ("observatory.txt", "The Emberly Observatory sits on the summit of Mount Caldrith at 4,200 metres above sea level.",
     "At what altitude is the Emberly Observatory located?"),
    ("brassfinch.md", "The Brassfinch trading company shipped cinnamon from Port Ilvane to the northern cities.",
     "Which spice did the Brassfinch trading company ship?"),
    ("skyrell.txt", "Skyrell is a sport in which teams throw a feathered hoop through floating rings while gliding.",
     "How is the sport of Skyrell played?"),
    ("clock.txt", "The Morrowell Clock Tower in Hallistead chimes thirteen times at midnight on the winter solstice.",
     "How many times does the Morrowell Clock Tower chime on the winter solstice?"),
    ("vaccine.md", "Doctor Perpetua Ashgrove developed the first vaccine against Dunlevy marsh fever in 1911.",
     "Who developed the vaccine against Dunlevy marsh fever?"),
    ("falcon.txt", "The Quartzwing falcon can dive at more than 300 kilometres per hour along the Ardent Cliffs.",
     "How fast can the Quartzwing falcon dive?"),
]


def write_fact_corpus(folder: Path, facts: list[tuple[str, str, str]] = FACTS) -> Path:
    """Write one file per fact (Markdown files get a heading) and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, sentence, _ in facts:
        text = f"# Note {Path(name).stem}\n\n{sentence}\n" if name.endswith(".md") else sentence + "\n"
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def recall_at_k(retriever: Retriever, facts: list[tuple[str, str, str]], k: int = 3) -> float:
    results = retriever.search_many([question for _, _, question in facts], top_k=k)
    hits = sum(name in [hit.passage.source for hit in hits] for (name, _, _), hits in zip(facts, results))
    return hits / len(facts)


def _is_loopback(host: object) -> bool:
    if not isinstance(host, str):
        return True  # AF_UNIX paths and similar
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True, scope="module")
def no_network() -> Iterator[None]:
    """Fail if anything (e.g. the Hugging Face hub client) tries to reach a non-loopback address.

    HF_HUB_OFFLINE is deliberately *not* set here: the library itself must stay offline by default.
    """
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    attempts: list[object] = []

    def _check(address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if not _is_loopback(host):
            attempts.append(address)  # recorded too, in case a library swallows the error below
            raise AssertionError(f"retrieval code tried to reach the network ({address!r}); it must stay offline")

    def connect(self: socket.socket, address: object) -> None:
        _check(address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        _check(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        _check((host,))
        return real_getaddrinfo(host, *args, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(socket.socket, "connect", connect)
    patch.setattr(socket.socket, "connect_ex", connect_ex)
    patch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    patch.undo()
    assert attempts == [], f"network access was attempted: {attempts!r}"


@pytest.fixture(scope="module")
def single_threaded() -> Iterator[None]:
    """Run torch and Faiss on one thread for the module, then restore the previous settings.

    Embedding one short query with several threads is dominated by thread hand-offs, which become very slow
    on a busy or oversubscribed CPU; one thread keeps the suite fast and its results bit-for-bit stable.
    """
    import faiss
    import torch

    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real default embedder (bundled all-MiniLM-L6-v2), loaded once for the whole session."""
    emb = Embedder(device="cpu")
    assert emb.dimension == 384
    return emb


@pytest.fixture(scope="session")
def facts() -> list[tuple[str, str, str]]:
    return FACTS


@pytest.fixture(scope="session")
def write_facts() -> Callable[..., Path]:
    """``write_facts(folder, facts=FACTS)`` writes one file per fact (for module-scoped fixtures)."""
    return write_fact_corpus


@pytest.fixture(scope="session")
def recall() -> Callable[..., float]:
    """``recall(retriever, facts, k=3)``: share of fact questions whose source file is in the top k."""
    return recall_at_k


@pytest.fixture()
def fact_corpus(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``fact_corpus(facts=FACTS, name="corpus")`` writes a fact corpus under ``tmp_path``."""

    def make(facts: list[tuple[str, str, str]] = FACTS, name: str = "corpus") -> Path:
        return write_fact_corpus(tmp_path / name, facts)

    return make
