"""Tokenizer tools: canonical token bytes and byte-level views of vocabularies (later: supertoken and dynamic tokenizers)."""
