# %% [markdown]
# # 07 · RabbitMQ: two worker processes, one queue, one picture
#
# Everything so far ran in one process on the memory driver. Here the seed app's YAML
# runs on **RabbitMQ** (`queue.driver.amqp`), with **two worker processes** (`wqnb
# worker`, started from this notebook) consuming one queue and **the kernel publishing**.
# Each process records its own timeline; `wqnb.Timeline.merge` joins them into one, on
# one time axis. Then one worker is killed with `kill -9` while it holds messages, and
# the Gantt shows RabbitMQ handing them to the other. Last, what `basic.qos` and
# `prefetch` do, next to RabbitMQ's own *Ready / Unacked* picture.
#
# **It needs a broker.** With Debian's `rabbitmq-server` installed (`apt-get install
# rabbitmq-server`; Binder installs it from `binder/apt.txt`) the notebook starts its own
# throwaway broker on a free port and stops it at the end. Or point it at yours:
# `WQNB_AMQP_URL=amqp://guest:guest@localhost:5672/` (for instance `docker run -p
# 5672:5672 rabbitmq:3`). Without either, the first cell says so and stops; the outputs
# below are the stored ones from a run with a broker.
#
# Times here are real, so the cells whose output depends on timing are marked
# `# NBVAL_IGNORE_OUTPUT`; the rest (the YAML, the checks) is compared on every test run.

# %%
# NBVAL_IGNORE_OUTPUT
import asyncio
import atexit
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import wqnb
from wqnb import plot

sys.path.insert(0, str(Path.cwd().parent / "tests"))  # the project's throwaway-server launcher
try:
    from servers import RabbitMQServer
except ImportError:  # the notebook was copied out of the checkout
    RabbitMQServer = None

app_dir = Path(tempfile.mkdtemp(prefix="wqnb-rabbitmq-"))
broker = None
AMQP_URL = os.environ.get("WQNB_AMQP_URL") or os.environ.get("WQNB_TEST_AMQP_URL")  # (scripts/test's)
if AMQP_URL:
    where = "the broker named by WQNB_AMQP_URL"
elif RabbitMQServer is not None and RabbitMQServer.available():
    broker = RabbitMQServer(app_dir / "rabbitmq").start()  # a few seconds
    atexit.register(broker.stop)
    AMQP_URL, where = broker.url, "a private broker started by this notebook"
else:
    raise RuntimeError(
        "no RabbitMQ here: install Debian's rabbitmq-server (this notebook then starts its own), "
        "or set WQNB_AMQP_URL=amqp://guest:guest@HOST:5672/ before starting Jupyter. "
        "The outputs below are the stored ones.")
print(f"RabbitMQ: {where}")

# %% [markdown]
# ## The app: the seed YAML, on RabbitMQ
#
# The seed page's entries with one change: the driver is `queue.driver.amqp`. The queue
# and the consumer (`concurrency: 2`, `prefetch: 3`) are as before. The handler is a
# Python function here (`function.python`: module and name), so that the notebook can
# make one worker's handlers **hang** on cue later: each message takes 80 ms, and while
# the file named by `NB07_PAUSE` exists, a handler holds its message instead of
# returning. `queue_name` is the queue's name on the broker (by default the entry's
# name, `tasks`); each run of this notebook uses a fresh one.

# %%
APP_YAML = """\
version: "1.0"
namespace: app.queue
entries:
  - name: amqp_driver
    kind: queue.driver.amqp
    url: ${AMQP_URL}
    lifecycle:
      auto_start: true

  - name: tasks
    kind: queue.queue
    driver: app.queue:amqp_driver
    queue_name: ${QUEUE_NAME}

  - name: task_consumer
    kind: queue.consumer
    queue: app.queue:tasks
    func: app.queue:task_handler
    concurrency: 2
    prefetch: 3
    lifecycle:
      auto_start: true
      depends_on:
        - app.queue:tasks

  - name: task_handler
    kind: function.python
    source: nb07_handler:handle
"""
HANDLER_PY = """\
import asyncio
import json
import os
from pathlib import Path

PAUSE = Path(os.environ["NB07_PAUSE"])


async def handle(body):
    data = json.loads(body)
    await asyncio.sleep(0.08)       # process_task(data): 80 ms of work
    while PAUSE.exists():           # a hung downstream call: hold the message
        await asyncio.sleep(0.01)
    return f"done {data['id']}"     # Ack
"""
# the URL goes into the file, not into what is printed (it may carry a password); a
# queue name of its own for each run, so that a shared broker's leftovers never mix in
QUEUE_NAME = f"wqnb_nb07_{os.getpid()}_{time.time_ns()}"
_ = (app_dir / "app.yaml").write_text(APP_YAML.replace("${AMQP_URL}", AMQP_URL).replace("${QUEUE_NAME}", QUEUE_NAME))
_ = (app_dir / "nb07_handler.py").write_text(HANDLER_PY)
print(APP_YAML.split("\n  - name: tasks")[0])

# %% [markdown]
# ## Two workers
#
# `wqnb worker app.yaml --name w1 -o w1.parquet` runs the app's consumers and publishes
# nothing; SIGINT or SIGTERM stops it gracefully (buffered messages go back to the
# broker, running handlers finish) and it writes its timeline. `--checkpoint 0.2` also
# rewrites the file five times a second, so that a worker killed with `kill -9` still
# leaves what it recorded. We start two and wait for the line each prints when it is
# consuming (never a fixed sleep).

# %%
def start_worker(name, folder=None, deadline=60.0):
    """`wqnb worker` as a child process in `folder`; returns once it says it is consuming."""
    folder = folder or app_dir
    out = folder / f"{name}.parquet"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wqnb.cli", "worker", "app.yaml", "--name", name, "-o", out.name,
         "--checkpoint", "0.2"],
        cwd=folder, text=True, stdout=subprocess.PIPE, stderr=open(folder / f"{name}.err", "w"),
        env=dict(os.environ, NB07_PAUSE=str(folder / f"pause-{name}")))
    atexit.register(proc.kill)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    end, line = time.monotonic() + deadline, ""
    while time.monotonic() < end and sel.select(timeout=end - time.monotonic()):
        line = proc.stdout.readline()
        if "consuming" in line or not line:
            break
    if "consuming" not in line:
        proc.kill()
        raise RuntimeError(f"{name} did not start: {(folder / f'{name}.err').read_text()[-2000:]}")
    print(line.strip())
    return proc, out


w1, w1_file = start_worker("w1")
w2, w2_file = start_worker("w2")

# %% [markdown]
# ## The publisher: this kernel
#
# The kernel's runtime loads the same YAML but starts only the driver: it publishes, and
# consumes nothing. Each `publish` returns once RabbitMQ has **confirmed** the message
# (persistent, on a durable queue). 150 messages go out as fast as the broker confirms
# them; two workers at 2 × 12.5 messages/s need about six seconds.
#
# While they work, a small task asks the broker every 50 ms how many messages are
# *ready* in the queue (a passive `queue.declare`: RabbitMQ's own count), to set beside
# the timeline later.

# %%
pub = wqnb.Runtime.from_yaml(app_dir / "app.yaml")
pub.recorder.process = "pub"  # its name in the merged timeline
await pub.start("app.queue:amqp_driver")
QUEUE = "app.queue:tasks"
broker_ready = []  # (unix time, ready) as RabbitMQ reports it


async def sample_broker(every=0.05):
    while True:
        info = await pub.info(QUEUE)
        broker_ready.append((time.time(), info["ready"]))
        await asyncio.sleep(every)


sampler = asyncio.ensure_future(sample_broker())
ids = [await pub.publish(QUEUE, {"id": i}) for i in range(150)]
print(f"published {len(ids)} messages, each confirmed by the broker")

# %% [markdown]
# ## `kill -9` a worker that holds messages
#
# Once w1 has acked 20 messages (we read its checkpoint file), its handlers hang (we
# create its pause file): each holds the message it has, and RabbitMQ tops its prefetch
# buffer up. When a checkpoint written after that shows it holding `prefetch +
# concurrency` = 5 delivered, unacked messages (2 in its workers' hands, 3 in its
# buffer), it gets
# SIGKILL: no graceful stop, no timeline written at the end (its checkpoint has all it
# did: nothing happened in it since). RabbitMQ sees the connection drop and puts the 5
# back in the queue, flagged *redelivered*; w2 gets them.

# %%
def acked_ids(path):
    """Ids acked in a worker's timeline file (empty until its first checkpoint)."""
    if not path.exists():
        return set()
    df = wqnb.Timeline.read(path).df
    return set(df.loc[df["event"] == "ack", "msg_id"].astype(str))


async def wait_until(cond, deadline=120.0, what="a condition"):
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def holding(path):
    """A worker's gauges after the last event of its checkpoint file."""
    last = wqnb.Timeline.read(path).df.dropna(subset=["unsettled"]).iloc[-1]
    return int(last["busy"]), int(last["buffered"]), int(last["unsettled"])


await wait_until(lambda: len(acked_ids(w1_file)) >= 20, what="w1 to ack 20 messages")
(app_dir / "pause-w1").touch()
paused_at = time.time()
# handlers running then finish their 80 ms and hang: after that nothing happens in w1, so
# a checkpoint written 0.3 s later is its final state
await wait_until(lambda: w1_file.stat().st_mtime > paused_at + 0.3 and holding(w1_file) == (2, 3, 5),
                 what="w1 to hold 5 messages")
w1.send_signal(signal.SIGKILL)
killed_at = time.time()
w1.wait()
print(f"w1 killed with SIGKILL (exit status {w1.returncode}) while holding (busy, buffered, unsettled) = {holding(w1_file)}")

# %% [markdown]
# w2 carries on alone. When its checkpoints show every published message acked by one
# of the two, we stop it gracefully with SIGTERM and it writes its final timeline.

# %%
await wait_until(lambda: acked_ids(w1_file) | acked_ids(w2_file) >= set(ids), what="every message to be acked")
w2.send_signal(signal.SIGTERM)
summary_line = w2.communicate(timeout=60)[0].strip().splitlines()[-1]
sampler.cancel()
print(f"w2 exit status {w2.returncode}")

# %% [markdown]
# Its one-line summary (the counts vary from run to run):

# %%
# NBVAL_IGNORE_OUTPUT
print(summary_line)

# %% [markdown]
# ## One timeline from three processes
#
# `Timeline.merge` takes timelines or files. Each one knows the Unix time at its `t = 0`
# (`origin_unix`) and who recorded it (`process`), so `t` is shifted to count from the
# earliest start, rows are sorted by it, and a `process` column says where each row
# comes from. Messages are joined by `msg_id`, the id on the wire, the same in every
# process. The same consumer in two processes is two consumers, so they are named
# `consumer@process` (docs/brokers.md).
#
# A message a worker received from the broker starts there at its `deliver` row: the
# `publish` row is the publisher's. (The publisher records `publish` when the broker's
# confirm comes back, which can be a hair *after* a worker got the message.)

# %%
tl = wqnb.Timeline.merge([pub.timeline, w1_file, w2_file])
print(list(tl.df["process"].cat.categories))
print(list(tl.consumers))

# %%
# NBVAL_IGNORE_OUTPUT
tl.df[["t", "event", "consumer", "worker", "attempt", "redelivered", "process"]].head(8).round(3)

# %% [markdown]
# What at-least-once promises, checked on the merged timeline: every published message
# was acked; the ones w1 held when it died were **redelivered** to w2 (flagged by the
# broker, same `attempt`: a redelivery spends no retry) — at most w1's `prefetch +
# concurrency`. None was handled twice here, because w1's handlers had hung; a handler
# that has finished its work but not yet acked when the kill comes runs again on the
# other worker: handlers must be idempotent.

# %%
m = tl.messages()
acked = m[m["outcome"] == "ack"]
again = m[m["redelivered"]]
twice = acked.groupby("msg_id", observed=True).size().loc[lambda s: s > 1]
qos = tl.consumers["app.queue:task_consumer@w1"].prefetch + tl.consumers["app.queue:task_consumer@w1"].concurrency
print("every published message acked:", set(acked["msg_id"].astype(str)) >= set(ids))
print("redelivered ones went to w2, attempt 1:", set(again["process"]) == {"w2"}, set(again["attempt"]) == {1})
print(f"redelivered: {len(again)} (w1's prefetch + concurrency = {qos})")
print(f"acked twice: {len(twice)}; still in hand anywhere: {m['outcome'].isna().sum()}")

# %%
# NBVAL_IGNORE_OUTPUT
print(f"acked by w1: {(acked['process'] == 'w1').sum()}, by w2: {(acked['process'] == 'w2').sum()}")

# %% [markdown]
# ## The Gantt: who handled what, across processes
#
# One Gantt per worker process, on one time axis. Until the kill (dashed line) both
# take turns; w1's last bars are **grey**: deliveries it never finished, returned by the
# broker at the moment w2 received them again. w2's redelivered messages are marked ▼;
# after the kill w2 does everything.

# %%
t_kill = killed_at - tl.origin_unix
fig, axes = plt.subplots(2, 1, figsize=(11, 5), sharex=True, layout="constrained")
for ax, name in zip(axes, ("w1", "w2")):
    plot.gantt(tl, f"app.queue:task_consumer@{name}", ax=ax, labels=False)
    ax.axvline(t_kill, color="#9b2226", ls="--", lw=1)
    ax.set_title(f"{name}: who handled what (concurrency 2, prefetch 3)", loc="left", fontsize="medium")
r = m[m["redelivered"] & m["t_start"].notna()]
axes[1].scatter(r["t_start"], r["worker"].astype(float), marker="v", s=40, color="black", zorder=4,
                label="redelivered")
axes[0].set_xlabel("")
label = axes[0].text(t_kill, 1.45, " kill -9 w1", color="#9b2226", fontsize="small", va="bottom")

# %% [markdown]
# ## `basic.qos` and `prefetch`: what RabbitMQ calls Unacked
#
# A wqnb consumer asks RabbitMQ for `basic.qos = prefetch + concurrency` on its channel:
# the broker pushes at most that many unacked messages to it (here 3 + 2 = 5). They are
# RabbitMQ's **Unacked**; what waits in the queue is its **Ready**. So with two workers
# and a backlog, Unacked sits at 2 × 5 = 10 while Ready drains; after the kill, 5.
#
# wqnb's own gauges say the same, per process: `unsettled` (delivered, not yet acked)
# never exceeds the qos on either worker, and reaches it while there is a backlog.

# %%
for name in ("w1", "w2"):
    g = tl.gauges(f"app.queue:task_consumer@{name}")
    print(f"{name}: max unsettled {g['unsettled'].max()} (qos {qos}), max busy {g['busy'].max()} "
          f"(concurrency 2), max buffered {g['buffered'].max()} (prefetch 3)")

# %% [markdown]
# RabbitMQ's management UI draws a queue as Ready and Unacked, stacked (as
# `plot.ready_unacked` does for one process). Here: **Ready** as RabbitMQ reported it
# every 50 ms during the run, and on it **Unacked**, the sum of the two workers'
# `unsettled` from the merged timeline — w1's until it died (then the broker took its 5
# back: they are Ready again, then w2's). Each process's own `depth` column is only its
# cached view of the queue (docs/brokers.md), so the broker's count is the one to draw.

# %%
b = np.array(broker_ready)
b_t, b_ready = b[:, 0] - tl.origin_unix, b[:, 1]
grid = np.union1d(b_t, tl.df["t"].to_numpy())
grid = grid[grid >= b_t[0]]


def on_grid(t, v):
    """A step series (value after each t) read at every grid instant."""
    idx = np.searchsorted(t, grid, side="right") - 1
    return np.where(idx >= 0, np.asarray(v, dtype=float)[np.maximum(idx, 0)], 0.0)


ready = on_grid(b_t, b_ready)
unacked = np.zeros_like(grid)
for name in ("w1", "w2"):
    g = tl.gauges(f"app.queue:task_consumer@{name}")
    u = on_grid(g["t"].to_numpy(), g["unsettled"].to_numpy())
    unacked += np.where(grid < t_kill, u, 0.0) if name == "w1" else u
fig, ax = plt.subplots(figsize=(10, 3.2), layout="constrained")
ax.fill_between(grid, 0, ready, step="post", color=plot.RABBIT_COLORS["ready"], lw=0,
                label="Ready (asked of RabbitMQ)")
ax.fill_between(grid, ready, ready + unacked, step="post", color=plot.RABBIT_COLORS["unacked"], lw=0,
                label="Unacked (the workers' unsettled)")
ax.axvline(t_kill, color="#9b2226", ls="--", lw=1)
ax.set_xlabel("time (s)")
ax.set_ylabel("messages")
ax.legend(loc="upper right", fontsize="small")
title = ax.set_title("the queue on RabbitMQ: Ready and Unacked (2 workers × qos 5, then 1)", loc="left",
                     fontsize="medium")

# %% [markdown]
# Unacked sits at 10 while both workers have a backlog, at 5 once w1 is gone, and falls
# to 0 as the queue empties: `workers × (prefetch + concurrency)`, whatever the backlog.

# %%
# NBVAL_IGNORE_OUTPUT
print(f"Unacked before the kill: max {unacked[grid < t_kill].max():.0f}; after it: max "
      f"{unacked[grid > t_kill + 0.3].max():.0f}")

# %% [markdown]
# ## Prefetch 20: the same worker, a bigger buffer
#
# The same app with `prefetch: 20`, one worker (w3) on a queue of its own, 100 messages:
# its `basic.qos` is 20 + 2 = 22, so RabbitMQ keeps 22 messages Unacked on it while the
# rest is Ready. The messages are not handled faster (two workers still do the work); they
# just wait in the worker's buffer instead of the broker's queue — where a second worker
# could not get them, and where a crash would hand 22 of them back instead of 5.

# %%
(app_dir / "p20").mkdir()
_ = (app_dir / "p20" / "app.yaml").write_text(
    (app_dir / "app.yaml").read_text().replace("prefetch: 3", "prefetch: 20").replace(QUEUE_NAME, QUEUE_NAME + "_p20"))
_ = (app_dir / "p20" / "nb07_handler.py").write_text(HANDLER_PY)
w3, w3_file = start_worker("w3", app_dir / "p20")
pub20 = wqnb.Runtime.from_yaml(app_dir / "p20" / "app.yaml")
pub20.recorder.process = "pub20"
await pub20.start("app.queue:amqp_driver")
ids20 = [await pub20.publish(QUEUE, {"id": i}) for i in range(100)]
await wait_until(lambda: acked_ids(w3_file) >= set(ids20), what="w3 to ack every message")
w3.send_signal(signal.SIGTERM)
w3.communicate(timeout=60)
await pub20.stop()
tl20 = wqnb.Timeline.merge([pub20.timeline, w3_file])
g = tl20.gauges("app.queue:task_consumer@w3")
c20 = tl20.consumers["app.queue:task_consumer@w3"]
print(f"w3: max unsettled {g['unsettled'].max()} (qos {c20.prefetch + c20.concurrency}), max busy "
      f"{g['busy'].max()} (concurrency 2), max buffered {g['buffered'].max()} (prefetch 20); "
      f"acked {int(tl20.summary()['acked'])} of {len(ids20)}")

# %%
fig, ax = plt.subplots(figsize=(10, 2.8), layout="constrained")
for gauge in ("unsettled", "buffered", "busy"):
    ax.plot(g["t"], g[gauge], drawstyle="steps-post", color=plot.GAUGE_COLORS[gauge], label=gauge)
ax.axhline(c20.prefetch + c20.concurrency, color="#888888", ls="--", lw=1)
ax.set_xlabel("time (s)")
ax.set_ylabel("messages")
ax.legend(loc="upper right", fontsize="small")
title = ax.set_title("w3 (prefetch 20): Unacked on RabbitMQ = its unsettled, up to qos 22 (dashed)", loc="left",
                     fontsize="medium")

# %% [markdown]
# What `prefetch` changes, in one line each:
#
# * **Unacked** is `workers × (prefetch + concurrency)`: a bigger prefetch takes more
#   messages off the queue into consumers' buffers (Ready falls, Unacked rises; the
#   total is the same).
# * **A crash** returns up to `prefetch + concurrency` messages per dead process, all
#   flagged redelivered; up to `concurrency` of them may have run already.
# * **Fairness**: a message in a busy consumer's buffer cannot go to an idle one. With
#   a slow and a fast consumer, prefetch 1 gives most of the work to the fast one; a
#   large prefetch splits it evenly and the slow one sets the pace (RabbitMQ's classic
#   lesson; 02 shows the one-process side of it).
#
# ## Clean up
#
# The publisher stops, and so does the broker this notebook started (a broker named by
# `WQNB_AMQP_URL` is left running); the temporary folder goes.

# %%
await pub.stop()
if broker is not None:
    broker.stop()
shutil.rmtree(app_dir, ignore_errors=True)
print("stopped")
