"""Peak extra memory per rank of twopass.torch.distributed.linear_cross_entropy against
tpd.cross_entropy on the shard's whole logits: 2 gloo ranks, one forward + backward after a
small warm-up, the peak resident size (VmHWM, reset through /proc/self/clear_refs) minus
the resident size before the step. Linux only.

    python tools/lce_dist_memory.py
"""

import datetime
import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024


def worker(rank, world, port, n, hdim, v, variant):
    import torch.nn.functional as F

    import twopass.torch.distributed as tpd

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    g = torch.Generator().manual_seed(0)
    vr = v // world
    h = torch.randn(n, hdim, generator=g).requires_grad_()
    w = (torch.randn(vr, hdim, generator=g) / hdim**0.5).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)

    def step(h, w, t):
        if variant == "twopass":
            loss = tpd.linear_cross_entropy(h, w, t, vocab_start=rank * vr)
        else:  # the shard's whole logits, then tpd.cross_entropy
            loss = tpd.cross_entropy(F.linear(h, w), t, vocab_start=rank * vr)
        loss.backward()
        h.grad = w.grad = None

    step(h[:64], w, t[:64])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS:")
    step(h, w, t)
    print(
        json.dumps(
            {
                "rank": rank,
                "variant": variant,
                "peak_extra_MiB": (status("VmHWM:") - before) / 2**20,
                "logits_shard_MiB": n * vr * 4 / 2**20,
            }
        ),
        flush=True,
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    world, n, hdim, v = 2, 2048, 512, 32000
    for i, variant in enumerate(("twopass", "unfused_shard")):
        mp.start_processes(worker, args=(world, 29600 + i, n, hdim, v, variant), nprocs=world, start_method="spawn")
