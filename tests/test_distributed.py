"""DistributedDataParallel with shift layers: 2 CPU processes (gloo, loopback only)."""

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import torchshift2 as ts

WORLD = 2
STEPS = 3
GLOBAL_BATCH = 8


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)
        self.ssl = ts.Shift2d(4, init_shift=2, sparsity_term=1e-2)
        self.active = ts.Shift2d(4, active_flag=True, padding="reflect", sparsity_term=1e-2,
                                 emulate_dw=dict(kernel_size=3, stride=2))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x, loss1 = self.ssl(self.conv(x))
        x, loss2 = self.active(torch.relu(x))
        return self.head(x.mean((2, 3))), loss1 + loss2


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, GLOBAL_BATCH, 3, 9, 9, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (STEPS, GLOBAL_BATCH), generator=g)
    return x, y


def train(model, xs, ys):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for x, y in zip(xs, ys):
        optimizer.zero_grad()
        logits, sparsity = model(x)
        (nn.functional.cross_entropy(logits, y) + sparsity).backward()
        optimizer.step()


def worker(rank, init_method, out_dir):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(Net().double())
        xs, ys = data()
        local = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        train(model, xs[:, local], ys[:, local])
        torch.save(model.module.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_matches_single_process_training(tmp_path):
    # Single process on the global batch first (it also builds/loads the kernel once, before
    # the workers start).
    single = Net().double()
    initial = {k: v.clone() for k, v in single.state_dict().items()}
    train(single, *data())

    init_method = f"tcp://127.0.0.1:{free_port()}"
    context = mp.start_processes(worker, args=(init_method, str(tmp_path)), nprocs=WORLD,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("DDP workers did not finish within 120 s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()

    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name, value in single.state_dict().items():
        assert not torch.equal(value, initial[name]), f"{name} did not train"
        for rank in range(1, WORLD):
            assert torch.equal(states[rank][name], states[0][name]), (name, rank)
        torch.testing.assert_close(states[0][name], value, rtol=1e-10, atol=1e-12, msg=name)
