"""Tokenizer transplant: give a model another model's tokenizer without training (`tokeff transplant`)."""
