"""External weights of the local server: a PEFT-style LoRA adapter (``adapter_model.safetensors`` + config).

``save_weights_external`` writes these two files into an ``external_weights`` checkpoint. The weights
file is a valid safetensors file: an 8-byte little-endian header length, a JSON header, then the
tensors. With ``export_size`` set (a server option, for download benchmarks) a ``U8`` padding tensor
of deterministic bytes makes the file about that large; it is written in blocks, never held in memory.
"""

import hashlib
import json
import struct
from typing import Any, BinaryIO, Callable, Dict, Optional

#: The adapter's weights file and its configuration, as PEFT names them.
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
#: Size of the block the padding is written in.
_BLOCK = 1 << 20


def _config(base_model: str, rank: int, flags: Dict[str, bool]) -> bytes:
    modules = []
    if flags.get("train_attn", True):
        modules += ["q_proj", "k_proj", "v_proj", "o_proj"]
    if flags.get("train_mlp", True):
        modules += ["gate_proj", "up_proj", "down_proj"]
    if flags.get("train_unembed", True):
        modules += ["lm_head"]
    config = {
        "base_model_name_or_path": base_model,
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": modules,
    }
    return json.dumps(config, indent=2, sort_keys=True).encode("utf-8") + b"\n"


def _padding(seed: bytes, size: int) -> Callable[[BinaryIO], None]:
    block = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(_BLOCK // 32))

    def write(f: BinaryIO) -> None:
        left = size
        while left > 0:
            n = min(left, _BLOCK)
            f.write(block[:n])
            left -= n

    return write


def adapter_files(
    weights: bytes, base_model: str, rank: int, flags: Dict[str, bool], export_size: Optional[int] = None
) -> Dict[str, Any]:
    """Return ``{file name: bytes or writer}`` of an adapter export of ``weights`` (float64 little-endian values).

    With ``export_size`` the weights file is that large (within the header's 8-byte alignment), a padding
    tensor filling it up; a size below what the weights need leaves them unpadded.
    """
    tensors: Dict[str, Any] = {
        "base_model.model.lora.weight": {"dtype": "F64", "shape": [len(weights) // 8], "data_offsets": [0, len(weights)]},
    }
    meta = {"__metadata__": {"format": "pt", "base_model": base_model, "rank": str(rank)}}

    def header(pad: int) -> bytes:
        described = dict(meta, **tensors)
        if pad:
            described["padding"] = {"dtype": "U8", "shape": [pad], "data_offsets": [len(weights), len(weights) + pad]}
        text = json.dumps(described, sort_keys=True, separators=(",", ":")).encode("utf-8")
        return text + b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes

    pad = 0
    if export_size is not None:
        # The header's length depends on the padding's (its size is written in it): settle it in a few rounds.
        for _ in range(3):
            pad = max(0, export_size - 8 - len(header(max(pad, 1))) - len(weights))
    head = header(pad)
    padding = _padding(hashlib.sha256(weights).digest(), pad)

    def write(f: BinaryIO) -> None:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        f.write(weights)
        padding(f)

    return {WEIGHTS_FILE: write, CONFIG_FILE: _config(base_model, rank, flags)}
