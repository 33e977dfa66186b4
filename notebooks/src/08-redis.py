# %% [markdown]
# # 08 · Redis Streams: what `claim_min_idle` trades
#
# 07's twin on **Redis** (`queue.driver.redis`): the same seed app, two `wqnb worker`
# processes on one stream, the kernel publishing, timelines merged. RabbitMQ notices a
# dead consumer by its connection dropping. Redis Streams cannot: a message delivered to a
# consumer stays *pending* on it until someone `XAUTOCLAIM`s it, and wqnb's workers claim
# an entry once it has been idle for **`claim_min_idle`**. So `claim_min_idle` is how long
# a dead worker's messages wait before another worker takes them (**recovery time**).
#
# Why not make it tiny? A live worker's refresher re-claims everything it holds every
# `claim_min_idle / 3`, so a long handler is never mistaken for a dead one. But a process
# that is alive and **frozen** (stopped, swapping, a blocked event loop) refreshes nothing:
# a freeze longer than `claim_min_idle` looks like a death, another worker takes its
# messages, and when the frozen one wakes up it finishes them too (**duplicates**). Here
# both, with `claim_min_idle` 1 s and 3 s: a `kill -9` (recovery time) and a 1.5 s freeze
# with `SIGSTOP` / `SIGCONT` (duplicates).
#
# **It needs a Redis.** With Debian's `redis-server` installed (`apt-get install
# redis-server`; Binder installs it from `binder/apt.txt`) the notebook starts its own
# throwaway server (AOF on) on a free port and stops it at the end. Or point it at yours:
# `WQNB_REDIS_URL=redis://localhost:6379/0` (for instance `docker run -p 6379:6379
# redis:7`); the notebook uses streams of its own and deletes them. Without either, the
# first cell says so and stops; the outputs below are the stored ones.
#
# Times here are real, so the cells whose output depends on timing are marked
# `# NBVAL_IGNORE_OUTPUT`; the checks are compared on every test run.

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

import wqnb
from wqnb import plot

sys.path.insert(0, str(Path.cwd().parent / "tests"))  # the project's throwaway-server launcher
try:
    from servers import RedisServer
except ImportError:  # the notebook was copied out of the checkout
    RedisServer = None

app_dir = Path(tempfile.mkdtemp(prefix="wqnb-redis-"))
server = None
REDIS_URL = os.environ.get("WQNB_REDIS_URL") or os.environ.get("WQNB_TEST_REDIS_URL")  # (scripts/test's)
if REDIS_URL:
    where = "the Redis named by WQNB_REDIS_URL"
elif RedisServer is not None and RedisServer.available():
    server = RedisServer(app_dir / "redis").start()  # well under a second
    atexit.register(server.stop)
    REDIS_URL, where = server.url, "a private redis-server started by this notebook"
else:
    raise RuntimeError(
        "no Redis here: install Debian's redis-server (this notebook then starts its own), "
        "or set WQNB_REDIS_URL=redis://HOST:6379/0 before starting Jupyter. "
        "The outputs below are the stored ones.")
print(f"Redis: {where}")

# %% [markdown]
# ## The app: the seed YAML, on Redis
#
# The driver is `queue.driver.redis` with `claim_min_idle` (the default is 30 s; here 1 s
# or 3 s) and `block: 200ms` (the longest blocking `XREADGROUP`). The consumer is 07's
# (`concurrency: 2`, `prefetch: 3`), and so is the handler: 50 ms a message, and while the
# file named by `NB08_PAUSE` exists it holds its message. Each run gets a stream of its own
# (`queue_name`).

# %%
APP_YAML = """\
version: "1.0"
namespace: app.queue
entries:
  - name: redis_driver
    kind: queue.driver.redis
    url: ${REDIS_URL}
    claim_min_idle: ${CLAIM}
    block: 200ms
    lifecycle:
      auto_start: true

  - name: tasks
    kind: queue.queue
    driver: app.queue:redis_driver
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
    source: nb08_handler:handle
"""
HANDLER_PY = """\
import asyncio
import json
import os
from pathlib import Path

PAUSE = Path(os.environ["NB08_PAUSE"])


async def handle(body):
    data = json.loads(body)
    await asyncio.sleep(0.05)       # process_task(data): 50 ms of work
    while PAUSE.exists():           # a hung downstream call: hold the message
        await asyncio.sleep(0.01)
    return f"done {data['id']}"     # Ack
"""
RUN_ID = f"{os.getpid()}_{time.time_ns()}"
QUEUE = "app.queue:tasks"
print(APP_YAML.split("\n  - name: tasks")[0])

# %% [markdown]
# ## One run
#
# `run(claim, fault)` writes the app with that `claim_min_idle` into a folder of its own,
# starts two workers (`wqnb worker … --checkpoint 0.2`, as in 07) and publishes 50
# messages from the kernel. Once both have handled them, both workers' handlers hang
# (their pause files) and the other 50 go out: each worker takes what it can hold,
# `prefetch + concurrency` = 5 (2 in its workers' hands, 3 in its buffer). When w1 holds
# its 5, w2's handlers are let go, and the fault strikes w1:
#
# * `"kill"`: `SIGKILL`. Nothing tells Redis; the 5 stay pending on w1's consumer until
#   w2 claims them.
# * `"freeze"`: `SIGSTOP`, 1.5 s, `SIGCONT`, its handlers released during the freeze. w1
#   then carries on as if nothing had happened.
#
# When every message is acked by one of them, w2 (and w1, if alive) stop with `SIGTERM`,
# and the run returns the merged timeline and the fault's time on its axis.

# %%
def start_worker(name, folder, deadline=60.0):
    """`wqnb worker` as a child process in `folder`; returns once it says it is consuming."""
    out = folder / f"{name}.parquet"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wqnb.cli", "worker", "app.yaml", "--name", name, "-o", out.name,
         "--checkpoint", "0.2"],
        cwd=folder, text=True, stdout=subprocess.PIPE, stderr=open(folder / f"{name}.err", "w"),
        env=dict(os.environ, NB08_PAUSE=str(folder / f"pause-{name}")))
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
    return proc, out


def acked_ids(path):
    """Ids acked in a worker's timeline file (empty until its first checkpoint)."""
    if not path.exists():
        return set()
    df = wqnb.Timeline.read(path).df
    return set(df.loc[df["event"] == "ack", "msg_id"].astype(str))


def holding(path):
    """A worker's (busy, buffered, unsettled) after the last event of its checkpoint file."""
    last = wqnb.Timeline.read(path).df.dropna(subset=["unsettled"]).iloc[-1]
    return int(last["busy"]), int(last["buffered"]), int(last["unsettled"])


async def wait_until(cond, deadline=120.0, what="a condition", detail=None):
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}" + (f" ({detail()})" if detail else ""))
        await asyncio.sleep(0.05)


streams = []  # the runs' stream names, deleted at the end


async def run(claim, fault, n=100, freeze=1.5):
    folder = app_dir / f"{fault}-{claim}s"
    folder.mkdir()
    queue_name = f"wqnb_nb08_{RUN_ID}_{fault}_{claim}"
    streams.append(queue_name)
    # the URL goes into the file, not into what is printed (it may carry a password)
    (folder / "app.yaml").write_text(APP_YAML.replace("${REDIS_URL}", REDIS_URL)
                                     .replace("${CLAIM}", f"{claim}s").replace("${QUEUE_NAME}", queue_name))
    (folder / "nb08_handler.py").write_text(HANDLER_PY)
    w1, w1_file = start_worker("w1", folder)
    w2, w2_file = start_worker("w2", folder)
    pub = wqnb.Runtime.from_yaml(folder / "app.yaml")
    pub.recorder.process = "pub"
    await pub.start("app.queue:redis_driver")
    ids = [await pub.publish(QUEUE, {"id": i}) for i in range(n // 2)]
    await wait_until(lambda: acked_ids(w1_file) | acked_ids(w2_file) >= set(ids), what="the first half to be acked")
    for name in ("w1", "w2"):  # both workers' handlers hang from now on
        (folder / f"pause-{name}").touch()
    paused_at = time.time()
    ids += [await pub.publish(QUEUE, {"id": i}) for i in range(n // 2, n)]
    # w2 can hold only 5 of these 50, so w1 gets its 5 however the two are scheduled; and
    # nothing happens in a hung worker, so a checkpoint written 0.3 s later is its state
    await wait_until(lambda: w1_file.stat().st_mtime > paused_at + 0.3 and holding(w1_file) == (2, 3, 5),
                     what="w1 to hold 5 messages", detail=lambda: f"it holds {holding(w1_file)}")
    (folder / "pause-w2").unlink()  # w2 carries on
    if fault == "kill":
        w1.send_signal(signal.SIGKILL)
        fault_at = time.time()
        w1.wait()
    else:
        w1.send_signal(signal.SIGSTOP)
        fault_at = time.time()
        (folder / "pause-w1").unlink()  # when it wakes up, its handlers carry on
        await asyncio.sleep(freeze)  # the freeze itself: what this run is about
        w1.send_signal(signal.SIGCONT)
    await wait_until(lambda: acked_ids(w1_file) | acked_ids(w2_file) >= set(ids), what="every message acked")
    for w in (w1, w2):
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
            await asyncio.to_thread(w.communicate, timeout=60)
    await pub.stop()
    tl = wqnb.Timeline.merge([pub.timeline, w1_file, w2_file])
    return tl, fault_at - tl.origin_unix, set(ids)


def outcome(tl, t_fault, ids):
    """What a run shows: how long w1's messages waited, how many ran twice."""
    m = tl.messages()
    acked = m[m["outcome"] == "ack"]
    again = m[m["redelivered"] & (m["process"] == "w2")]
    acks = tl.df[tl.df["event"] == "ack"]  # one row per ack, in whichever process
    twice = acks.groupby("msg_id", observed=True).size().loc[lambda s: s > 1]
    return {
        "all acked": set(acked["msg_id"].astype(str)) >= ids,
        "claimed by w2": len(again),
        "recovery (s)": float(again["t_start"].min() - t_fault) if len(again) else float("nan"),
        "handled twice": len(twice),
    }


# %% [markdown]
# ## A dead worker: its messages come back after `claim_min_idle`
#
# Two runs, `claim_min_idle` 1 s and 3 s. *Recovery* is the time from the kill to the
# first of w1's messages starting on w2. It is about `claim_min_idle`: w1's refresher had
# reset their idle time at most a third of it before the kill, and w2 looks for idle
# entries every quarter of it; then they wait behind what w2 already has in its buffer.
# The check allows half a second on top for that and for a loaded machine.

# %%
kills = {claim: await run(claim, "kill") for claim in (1, 3)}
kill_outcomes = {claim: outcome(*r) for claim, r in kills.items()}

# %%
# NBVAL_IGNORE_OUTPUT
for claim, o in kill_outcomes.items():
    print(f"claim_min_idle {claim} s: w2 claimed {o['claimed by w2']} of w1's messages, "
          f"{o['recovery (s)']:.2f} s after the kill; handled twice: {o['handled twice']}")

# %%
for claim, o in kill_outcomes.items():
    print(f"claim_min_idle {claim} s: all acked {o['all acked']}, w2 claimed w1's 5: {o['claimed by w2'] == 5}, "
          f"recovery between claim_min_idle / 2 and claim_min_idle * 1.25 + 0.5 s: "
          f"{claim / 2 <= o['recovery (s)'] <= claim * 1.25 + 0.5}, none twice: {o['handled twice'] == 0}")

# %% [markdown]
# w2's Gantt in both runs (each on its own time axis; the kill dashed): w1's five messages
# (▼, *redelivered*) wait out `claim_min_idle` (the grey band) before w2 runs them.

# %%
fig, axes = plt.subplots(2, 1, figsize=(11, 5), layout="constrained")
for ax, (claim, (tl, t_kill, _)) in zip(axes, kills.items()):
    plot.gantt(tl, "app.queue:task_consumer@w2", ax=ax, labels=False)
    ax.axvline(t_kill, color="#9b2226", ls="--", lw=1)
    ax.axvspan(t_kill, t_kill + claim, color="#cccccc", alpha=0.4, lw=0)
    m = tl.messages()
    r = m[m["redelivered"] & (m["process"] == "w2") & m["t_start"].notna()]
    ax.scatter(r["t_start"], r["worker"].astype(float), marker="v", s=40, color="black", zorder=4)
    ax.set_xlim(t_kill - 1.0, t_kill + claim + 1.5)
    ax.set_title(f"w2, claim_min_idle {claim} s: kill -9 of w1 (dashed), its messages claimed after the grey band",
                 loc="left", fontsize="medium")
axes[0].set_xlabel("")
label = axes[1].set_xlabel("time (s)")

# %% [markdown]
# ## A frozen worker: a freeze longer than `claim_min_idle` runs messages twice
#
# The same two settings, and w1 frozen for 1.5 s instead of killed. With 3 s nothing
# happens: the freeze is shorter than `claim_min_idle`, w1 wakes up and finishes its
# messages, w2 never claims them. With 1 s, w2 takes w1's messages while it is frozen
# (exactly as after the kill), and w1, woken up, runs the ones it had started or
# buffered as well: handled twice. (A live, *running* worker is safe with any
# `claim_min_idle`: its refresher keeps what it holds claimed, however long a handler
# takes; `tests/test_redis_faults.py` runs a handler of 3 × `claim_min_idle`.)

# %%
freezes = {claim: await run(claim, "freeze") for claim in (1, 3)}
freeze_outcomes = {claim: outcome(*r) for claim, r in freezes.items()}

# %%
# NBVAL_IGNORE_OUTPUT
for claim, o in freeze_outcomes.items():
    print(f"claim_min_idle {claim} s, 1.5 s freeze: w2 claimed {o['claimed by w2']}, "
          f"handled twice: {o['handled twice']}")

# %%
o1, o3 = freeze_outcomes[1], freeze_outcomes[3]
print(f"all acked: {o1['all acked'] and o3['all acked']}")
print(f"claim_min_idle 1 s: w2 claimed the frozen worker's messages: {o1['claimed by w2'] > 0}, "
      f"some ran twice: {o1['handled twice'] > 0}")
print(f"claim_min_idle 3 s: none claimed: {o3['claimed by w2'] == 0}, none twice: {o3['handled twice'] == 0}")

# %% [markdown]
# ## The trade
#
# | `claim_min_idle` | a dead worker's messages wait | a freeze that runs messages twice |
# | --- | --- | --- |
# | 1 s | about 1 s | anything over ~1 s |
# | 3 s | about 3 s | anything over ~3 s |
# | 30 s (the default) | about 30 s | anything over ~30 s |
#
# Pick it longer than the longest freeze you expect of a live process (a stop-the-world
# pause, a swap storm, a debugger breakpoint, a `SIGSTOP` in a container that is being
# checkpointed) and as short as the recovery you can wait for. Long handlers do not
# count: the refresher keeps them claimed. What it costs besides: one `XCLAIM` per
# worker every `claim_min_idle / 3` while it holds messages. Handlers must be idempotent
# either way: a kill after a handler finished and before its ack runs it again
# (at-least-once, as on RabbitMQ).
#
# ## Clean up
#
# The runs' streams are deleted; a Redis this notebook started is stopped; the
# temporary folder goes.

# %%
import redis

r = redis.Redis.from_url(REDIS_URL)
_ = r.delete(*streams, *(f"{s}:wqnb-released" for s in streams))
r.close()
if server is not None:
    server.stop()
shutil.rmtree(app_dir, ignore_errors=True)
print("stopped")
