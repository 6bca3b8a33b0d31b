"""How a failed run is reported: out-of-memory failures are told apart from other errors."""

from __future__ import annotations

from kronypt.train.config import TrainArgs
from kronypt.train.failures import out_of_memory


def test_out_of_memory_is_one_line_naming_the_batch_and_other_errors_pass() -> None:
    args = TrainArgs(micro_batch_size=4096, seq_len=1024)
    for exc in (MemoryError("Unable to allocate 246. GiB for an array"),
                RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore lines"),
                RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes")):
        message = str(out_of_memory(exc, args))
        assert message.startswith("out of memory with micro_batch_size 4,096 × seq_len 1,024 (") and "\n" not in message
        assert message.endswith("lower --micro-batch-size (--tokens-per-step keeps the tokens of one step)")
    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), args) is None
    assert out_of_memory(ValueError("out of memory"), args) is None
