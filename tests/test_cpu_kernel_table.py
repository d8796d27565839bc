"""The kernel selection table of torchshift2/backends/cpp/README.md against the code.

Every row's case is run through ``torchshift2_cpu::kernel_name`` (the dispatch's own
``choose_kernel``, without running a kernel) and must select the row's function; every entry
point of ``csrc/kernels.h`` must appear in the table, and the table must name nothing else.
Rows for another instruction set than the build's are skipped (run with
``TORCHSHIFT2_MARCH=haswell`` on an AVX-512 machine to check the AVX2 rows).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from torchshift2.backends import cpp

CPP = Path(cpp.__file__).parent
README = CPP / "README.md"
KERNELS_H = CPP / "csrc" / "kernels.h"

DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
    "float16": torch.float16, "uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16,
    "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
}
ANY_DTYPE = ("float32", "float64", "bfloat16", "int16", "uint8", "bool")
# direction -> (kernel_name's direction, the active flags it covers, the output_mask).
DIRECTIONS = {"forward SSL": ("forward", (False,), (True, True)),
              "forward Active": ("forward", (True,), (True, True)),
              "backward": ("backward", (False, True), (True, True)),
              "backward SSL": ("backward", (False,), (True, True)),
              "backward Active": ("backward", (True,), (True, True)),
              "backward grad_input only": ("backward", (False, True), (True, False)),
              "backward SSL grad_input only": ("backward", (False,), (True, False)),
              "backward Active grad_input only": ("backward", (True,), (True, False)),
              "backward grad_weight only": ("backward", (False, True), (False, True)),
              "in place": ("inplace", (False,), (True, True))}
# The table's ISA column against torchshift2_cpu::isa(); portable builds choose as AVX-512.
ISAS = {"any": ("avx512", "avx2", "portable"), "AVX-512": ("avx512", "portable"),
        "AVX2": ("avx2",)}


def _rows():
    text = README.read_text()
    table = text[text.index("<!-- kernel-table"):text.index("<!-- /kernel-table -->")]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows.append(dict(zip(header, cells)))
    return rows


ROWS = _rows()


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    nd = x.dim() - 2
    order = [0] + list(range(2, nd + 2)) + [1]
    return x.permute(order).contiguous().permute([0, nd + 1] + list(range(1, nd + 1)))


def _tensor(shape, layout, dtype):
    """A meta tensor of the case's shape and layout (kernel_name reads sizes and strides)."""
    empty = lambda s: torch.empty(s, dtype=dtype, device="meta")  # noqa: E731
    if layout == "nchw":
        return empty(shape)
    if layout == "cl":
        return _channels_last(empty(shape))
    if layout == "permuted":  # the last dim outermost
        return empty(shape).transpose(-1, 0).contiguous().transpose(-1, 0)
    if layout == "cl_hstep":  # every other row of dim 2 of a channels-last tensor
        doubled = list(shape)
        doubled[2] *= 2
        return _channels_last(empty(doubled))[:, :, ::2]
    if layout == "cl_huge":  # channels innermost, a row stride past 32-bit indices
        x = _channels_last(empty(shape))
        strides = list(x.stride())
        strides[2] = 1 << 31
        return torch.empty_strided(shape, strides, dtype=dtype, device="meta")
    raise ValueError(f"unknown layout {layout!r} in the kernel table")


def _weight(kind, channels, ndim):
    """The case's weight (option ``shifts=``): ``equal``, every channel shifted by 0.5 in
    each dim (SSL: one tap per block; Active: 2^D); ``spread``, channel c by
    ((c % 4) - 1.5, ...) (SSL: 4^D taps per block, up to 16); ``uniform``, uniform in
    +-1.5 from seed 0 (the harness's uniform1.5; SSL 2D: 7-8 taps per block of 16);
    ``block``, channels 0-11 by 1, the others not; absent, no weight (the widest spread)."""
    if kind is None:
        return None
    if kind == "equal":
        return torch.full((channels, ndim), 0.5)
    if kind == "block":  # channels 0-11 move (in place: a block of 16 for 12 moving channels)
        weight = torch.zeros(channels, ndim)
        weight[:12] = 1.0
        return weight
    if kind == "spread":
        c = torch.arange(channels, dtype=torch.float64)
        return torch.stack([(c // 4 ** d) % 4 - 1.5 for d in range(ndim)], dim=1).float()
    if kind == "uniform":
        return torch.rand(channels, ndim, generator=torch.Generator().manual_seed(0)) * 3 - 1.5
    raise ValueError(f"unknown shifts={kind!r} in the kernel table")


def _case(text: str):
    shape, layout, *options = text.split()
    options = dict(option.split("=") for option in options)
    return [int(s) for s in shape.split("x")], layout, options


def _row_id(row):
    return f"{row['direction']}|{row['layout']}|{row['D']}|{row['ISA']}|{row['case']}"


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_row_selects_its_function(row):
    isa = cpp.isa()
    if isa not in ISAS[row["ISA"]]:
        pytest.skip(f"{row['ISA']} row; this build is {isa}")
    direction, actives, mask = DIRECTIONS[row["direction"]]
    shape, layout, options = _case(row["case"])
    expected = row["function"].replace("`", "")
    dtypes = ANY_DTYPE if row["dtype"] == "any" else [d.strip() for d in row["dtype"].split(",")]
    crop = [int(v) for v in options["crop"].split(",")] if "crop" in options else None
    threads = torch.get_num_threads()
    torch.set_num_threads(int(options.get("threads", threads)))
    try:
        for dtype in dtypes:
            x = _tensor(shape, layout, DTYPES[dtype])
            for active in actives:
                k = int(options.get("k", 1))
                weight = _weight(options.get("shifts"), k * shape[1], len(shape) - 2)
                got = cpp.kernel_name(direction, x, options.get("padding", "zeros"), active, crop,
                                      multiplier=k, needs_grad_input=mask[0],
                                      needs_grad_weight=mask[1], weight=weight)
                assert got == expected, (dtype, active, got)
    finally:
        torch.set_num_threads(threads)


def test_table_names_every_entry_point_and_nothing_else():
    declared = set(re.findall(r"^void (\w+)\(const (?:Forward|Backward|Inplace)Call&\);",
                              KERNELS_H.read_text(), re.M))
    named = {row["function"].replace("`", "").split()[0] for row in ROWS}
    assert declared, "no entry points found in kernels.h"
    assert named == declared, (sorted(declared - named), sorted(named - declared))


def test_kernel_name_refuses_an_unknown_direction():
    with pytest.raises(RuntimeError, match="unknown direction"):
        cpp.kernel_name("sideways", torch.empty(1, 2, 3, device="meta"))


def test_kernel_name_of_an_empty_call_is_none():
    assert cpp.kernel_name("forward", torch.empty(0, 2, 3, device="meta")) == "none"
