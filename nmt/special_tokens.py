"""Reserved token ids, defined once for the wordpiece model, the data pipeline and the models.

sentencepiece is trained with exactly these ids (``pad_id``, ``unk_id``, ``bos_id``, ``eos_id``),
so an id means the same thing in a prepared dataset, a checkpoint and an exported bundle.
Character vocabularies reserve the same four ids before their symbols.
"""

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3

PAD_PIECE = "<pad>"
UNK_PIECE = "<unk>"
BOS_PIECE = "<s>"
EOS_PIECE = "</s>"

RESERVED_PIECES = (PAD_PIECE, UNK_PIECE, BOS_PIECE, EOS_PIECE)
