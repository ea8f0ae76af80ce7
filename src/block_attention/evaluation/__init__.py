"""Answer-quality evaluation of block mode against full attention on RAG data.

``data`` loads examples (this project's JSONL or the ``ctxs`` JSON of public RAG benchmarks), ``metrics`` scores
answers (SQuAD-style exact match, token F1, answer-contained; KL between next-token distributions), ``harness``
runs an engine over the examples in several modes, ``report`` prints the table and writes JSON and a plot.
Importing the package does no work.
"""
