"""Corpora -> cleaned text -> sentencepiece wordpieces -> Arrow datasets on disk."""
