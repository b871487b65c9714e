"""A small training loop run as a subprocess by the crash tests: resume with ``Checkpointer``, train, save, finish.

Usage: ``python crashloop.py URL LOG_DIR SIDE_FILE TOTAL SAVE_EVERY KEEP_LAST``. Each line it appends to
SIDE_FILE is one event: ``start <step> <source>``, ``ran <step> <loss>``, ``recording <step>`` (a record is
about to be appended; the loop then pauses 30 ms, widening that window for a kill) and ``done``. At the end
it prints the server's digests of the model as one JSON line.
"""

import json
import logging
import os
import sys
import time

import tinkex_persist as tp
from tinkex_persist.demo import model_state

API_KEY = "tml-crash-loop-key-0123456789"
#: One fixed batch: next-token cross-entropy on two short sequences.
SEQUENCES = ((151643, 9707, 11, 1879, 0, 576), (785, 3974, 374, 264, 1273, 315))
BATCH = [
    tp.Datum(model_input=tp.ModelInput.from_ints(list(seq[:-1])),
             loss_fn_inputs={"target_tokens": list(seq[1:]), "weights": [1.0] * (len(seq) - 1)})
    for seq in SEQUENCES
]


class _Side:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, line):
        os.write(self.fd, (line + "\n").encode())


class _RecordingWindow(logging.Handler):
    """On the Checkpointer's 'committed; recording it' message: mark the side file, then hold the window open."""

    def __init__(self, side):
        super().__init__(logging.DEBUG)
        self.side = side

    def emit(self, record):
        if record.getMessage().startswith("checkpoint ") and "recording it" in record.getMessage():
            self.side.write("recording %s" % record.args[0].rsplit("/", 1)[1])
            time.sleep(0.03)


def main(url, log_dir, side_path, total, save_every, keep_last):
    side = _Side(side_path)
    log = logging.getLogger("tinkex_persist.checkpointer")
    log.setLevel(logging.DEBUG)
    log.addHandler(_RecordingWindow(side))
    with tp.ServiceClient(base_url=url, api_key=API_KEY, heartbeat_interval=None) as service:
        ckpt = tp.Checkpointer(service, log_dir, save_every=save_every, keep_last=keep_last, ttl_seconds=3600)
        tc, start = ckpt.resume_or_create("Qwen/Qwen3-8B", rank=1, seed=7)
        side.write("start %d %s" % (start, ckpt.source))
        for step in range(start, total):
            fb = tc.forward_backward(BATCH, "cross_entropy")
            tc.optim_step(tp.AdamParams(learning_rate=1e-2)).result()
            loss = fb.result().metrics["loss:sum"]
            side.write("ran %d %r" % (step, loss))
            ckpt.step(tc, step + 1, epoch=0, seen=step + 1)
        ckpt.finish(tc, total)
        state = model_state(service, tc.model_id)
    side.write("done")
    print(json.dumps({k: state[k] for k in ("weights_sha256", "optimizer_sha256", "step")}))


if __name__ == "__main__":
    url, log_dir, side_path, total, save_every, keep_last = sys.argv[1:7]
    main(url, log_dir, side_path, int(total), int(save_every), int(keep_last))
