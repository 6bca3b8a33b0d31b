"""Token data: prepare GPT-2 BPE token folders from text corpora and read them back for training.

- `kronypt.data.prepare.prepare_tokens`: documents -> `train.bin`, `val.bin`, `meta.json` (uint16, nanoGPT layout).
- `kronypt.data.tokens`: `open_tokens`, `sample_batch`, `sequential_batches` for the training loop.
- `kronypt.data.sources` (what a document is), `kronypt.data.tokenizer` (tiktoken, offline from files),
  `kronypt.data.writer` (atomic output).
"""
