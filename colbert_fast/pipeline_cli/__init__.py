"""`colbert-fast index | search | rerank | eval`: one small module per subcommand (see colbert_fast/cli.py)."""
