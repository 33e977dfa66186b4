# %% [markdown]
# # 01 · Quick start: the seed app, a Lua handler, and its timeline
#
# wqnb runs [Wippy](https://wippy.ai)'s queue entries in Python. This notebook takes the
# example of Wippy's queue page as it is — a memory driver, a queue, a consumer with
# `concurrency: 4` and `prefetch: 20`, a Lua handler — publishes a few messages, and reads
# what happened from the **timeline**: one row per event.
#
# Run the cells top to bottom (Shift-Enter). Nothing here needs a network.

# %%
import logging
import sys
import tempfile
from pathlib import Path

import wqnb
from wqnb import plot

# The Lua logger writes to Python logging, with its fields attached: print them here.
class ShowFields(logging.Formatter):
    def format(self, record):
        fields = getattr(record, "fields", None) or {}
        extra = " ".join(f"{k}={v}" for k, v in sorted(fields.items()))
        return f"{record.levelname} {record.name}: {record.getMessage()}  {extra}"

handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(ShowFields())
logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
logging.getLogger("wqnb.consumer").setLevel(logging.WARNING)

# %% [markdown]
# ## The app: the seed page's YAML
#
# Three entries from the seed page, unchanged, plus the `function.lua` entry that points at
# the handler's file. `concurrency` is how many workers run the handler at once; `prefetch`
# is how many messages the consumer may hold in its buffer, waiting for a worker.

# %%
APP_YAML = """\
version: "1.0"
namespace: app.queue
entries:
  - name: memory_driver
    kind: queue.driver.memory
    lifecycle:
      auto_start: true

  - name: tasks
    kind: queue.queue
    driver: app.queue:memory_driver

  - name: task_consumer
    kind: queue.consumer
    queue: app.queue:tasks
    func: app.queue:task_handler
    concurrency: 4
    prefetch: 20
    lifecycle:
      auto_start: true
      depends_on:
        - app.queue:tasks

  - name: task_handler
    kind: function.lua
    source: file://task_handler.lua
    modules:
      - json
      - logger
"""

# %% [markdown]
# ## The handler: the seed page's Lua
#
# The seed's handler decodes the body, logs, calls `process_task`, and returns: a value
# **acks** the message (it leaves the queue); `return nil, err` **nacks** it (it is
# requeued). The seed leaves `process_task` to you; ours refuses tasks whose action is
# `"explode"`.

# %%
HANDLER_LUA = """\
local json = require("json")
local logger = require("logger")

local function process_task(data)
    if data.action == "explode" then
        return nil, "cannot process " .. data.id
    end
    return "done " .. data.id
end

local function handler(body)
    local data = json.decode(body)

    logger.info("Procesando", {task_id = data.id})

    local result, err = process_task(data)
    if err then
        return nil, err  -- Nack: reencolar mensaje
    end

    return result  -- Ack: remover de cola
end

return handler
"""

app_dir = Path(tempfile.mkdtemp(prefix="wqnb-quickstart-"))
_ = (app_dir / "_index.yaml").write_text(APP_YAML)
_ = (app_dir / "task_handler.lua").write_text(HANDLER_LUA)

# %% [markdown]
# ## Run it in the notebook's own event loop
#
# Jupyter already runs an asyncio loop, so the runtime's methods are simply awaited.
# `publish` takes a table/dict and sends it as JSON text, as Redis or AMQP would.

# %%
rt = wqnb.Runtime.from_yaml(app_dir)
await rt.start()
for i in range(1, 6):
    await rt.publish("app.queue:tasks", {"id": f"task-{i}", "action": "process"})
await rt.drain()   # until the queue is empty and every message is acked
await rt.stop()

# %% [markdown]
# Five messages, five log lines from Lua. Each step each message took is in
# `rt.timeline.df`. Times here are real (they change from run to run), so we look at
# the order and the counts:

# %%
df = rt.timeline.df
df["event"].value_counts().loc[["publish", "deliver", "start", "ack"]]

# %% [markdown]
# ## The same app on virtual time
#
# `wqnb.simulate` runs the **same runtime code** on a virtual clock: the run is
# deterministic and costs no wall time. To see workers at work, let `process_task` take
# 80 ms, as a call to a database would: Lua's `time.sleep` (add `time` to the entry's
# `modules`). On virtual time those 80 ms cost nothing.

# %%
slow_dir = Path(tempfile.mkdtemp(prefix="wqnb-quickstart-slow-"))
_ = (slow_dir / "_index.yaml").write_text(
    APP_YAML.replace("      - logger\n", "      - logger\n      - time\n"))
_ = (slow_dir / "task_handler.lua").write_text(
    HANDLER_LUA.replace('local logger = require("logger")',
                        'local logger = require("logger")\nlocal time = require("time")')
               .replace('    return "done " .. data.id',
                        '    time.sleep("80ms")\n    return "done " .. data.id'))
print((slow_dir / "task_handler.lua").read_text()[:260])

# %% [markdown]
# The publisher sends 200 messages at random (Poisson) times, 40 per second on average.
# Four workers at 80 ms each can handle 50 per second: enough, most of the time.

# %%
logging.getLogger("wqnb.lua").setLevel(logging.WARNING)   # quiet from here on

def body(i):
    return {"id": f"task-{i}", "action": "process"}

tl = wqnb.simulate(app=slow_dir, queue="app.queue:tasks", messages=200, arrival_rate=40.0,
                   body=body, seed=1)
tl

# %% [markdown]
# One row per event. `msg_id` is random per run, so we number messages in publish order.
# The gauges on the right are the state *after* the event: `depth` (ready in the queue),
# `buffered` (in the prefetch buffer), `busy` (workers running), `unsettled` (delivered,
# not yet acked or nacked). A `publish` row belongs to the queue, not to a consumer, so
# its consumer gauges are `<NA>` ("not this row's business", not zero); `tl.gauges()`
# carries every gauge forward into a full step series.

# %%
view = tl.df.assign(msg=tl.df["msg_id"].cat.codes, t=tl.df["t"].round(4))
view[["t", "event", "msg", "worker", "attempt", "depth", "buffered", "busy",
      "unsettled"]].head(10)

# %% [markdown]
# ## Three views of every timeline
#
# `messages()` has one row per delivery with its waits (seconds); `summary()` adds them
# up; `plot.gantt` shows which worker handled what.

# %%
tl.messages()[["attempt", "worker", "outcome", "queue_wait", "buffer_wait", "service"]].head(3)

# %% [markdown]
# `summary()` prints counts as whole numbers and times with their unit; it is still a
# Series of floats (`s["duration_s"]` is seconds):

# %%
tl.summary()[["published", "acked", "nacked", "duration_s", "throughput_per_s",
              "latency_p50_s", "max_depth"]]

# %%
ax = plot.gantt(tl, start=0, end=1)

# %% [markdown]
# ## Try it
#
# * Change `concurrency: 4` to `1` in `APP_YAML`, rerun, and look at the Gantt again.
#
# <details><summary>Answer</summary>
#
# One lane: the worker handles the messages one after another, and they wait in the
# prefetch buffer (`buffer_wait` in `messages()`) instead of being handled side by side.
# The run takes about four times longer, and `max_buffered` goes up.
# </details>
#
# * Publish `{"id": "task-x", "action": "explode"}` in the real run. The handler nacks it
#   and the message is requeued **forever** (Wippy retries without limit), so always
#   bound the experiment: wait with a timeout and stop the runtime whatever happens.
#
# ```python
# rt = wqnb.Runtime.from_yaml(app_dir)
# await rt.start()
# await rt.publish("app.queue:tasks", {"id": "task-x", "action": "explode"})
# try:
#     await rt.drain(timeout=1.0)      # never empty: TimeoutError after 1 s
# except TimeoutError:
#     print("still retrying after 1 s")
# finally:
#     await rt.stop()                  # the message is handed back to the queue
# rt.timeline.df["event"].value_counts()
# ```
#
# <details><summary>Answer</summary>
#
# Thousands of `deliver` / `start` / `nack` / `requeue` rows for the one message in a
# second, each `attempt` one higher: a failing message goes back to the tail of the queue
# and comes straight back. `drain()` waits for an empty queue, which never comes, so it
# needs its `timeout`. The way out is in notebook 04: a `dead_letter` queue with
# `max_attempts`, or a `requeue_delay` that spaces the retries. (Without the timeout, an
# interrupted `drain()` leaves the runtime running in the kernel: `await rt.stop()` ends it.)
# </details>
#
# * Next: **02-backpressure** — what happens when messages arrive faster than they are handled.
