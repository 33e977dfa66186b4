# %% [markdown]
# # 05 · Lua handlers: json, logger, queue, time — and the sandbox
#
# A `function.lua` entry is a Lua chunk that returns the handler; `modules:` lists what
# it may `require`. wqnb runs it in lupa (Lua 5.4), sandboxed, with Wippy's module
# shapes. Here: a two-stage pipeline, where a Lua handler publishes to another queue, all
# on virtual time.

# %%
import logging
import sys

import pandas as pd

import wqnb
from wqnb import plot


class ShowFields(logging.Formatter):  # print the Lua logger's fields, sorted
    def format(self, record):
        fields = getattr(record, "fields", None) or {}
        extra = " ".join(f"{k}={v}" for k, v in sorted(fields.items()) if k != "location")
        return f"{record.levelname} {record.name}: {record.getMessage()}  {extra}"


handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(ShowFields())
logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
pd.set_option("display.max_colwidth", 90)

# %% [markdown]
# ## A pipeline: orders → invoices
#
# `price_order` decodes an order (`json`), takes 30 ms (`time.sleep`), and publishes an
# invoice to a second queue (`queue.publish`, a table body). `file_invoice` logs each
# invoice (`logger`) with its fields and the virtual time (`time.now()`).

# %%
APP = r"""
namespace: shop
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: orders, kind: queue.queue, driver: shop:mem}
  - {name: invoices, kind: queue.queue, driver: shop:mem}

  - name: price_order
    kind: function.lua
    modules: [json, queue, time]
    source: |
      local json = require("json")
      local queue = require("queue")
      local time = require("time")
      return function(body)
        local order = json.decode(body)
        time.sleep("30ms")
        local total = order.qty * order.price
        local ok, err = queue.publish("shop:invoices", {order = order.id, total = total})
        if err then return nil, err end
        return true
      end

  - name: file_invoice
    kind: function.lua
    modules: [json, logger, time]
    source: |
      local json = require("json")
      local logger = require("logger")
      local time = require("time")
      local start = time.now()
      return function(body)
        local inv = json.decode(body)
        local waited = math.floor(time.now():sub(start):milliseconds() + 0.5)
        logger:info("invoice filed", {order = inv.order, total = inv.total, at_ms = waited})
        return true
      end

  - name: pricing
    kind: queue.consumer
    queue: shop:orders
    func: shop:price_order
    concurrency: 2
    prefetch: 4
    lifecycle: {auto_start: true}
  - name: filing
    kind: queue.consumer
    queue: shop:invoices
    func: shop:file_invoice
    lifecycle: {auto_start: true}
"""

logging.getLogger("wqnb.lua").setLevel(logging.INFO)
tl = wqnb.simulate(app=APP, queue="shop:orders", messages=6, arrival_rate=None,
                   body=lambda i: {"id": i, "qty": i + 1, "price": 2.5}, seed=1)
logging.getLogger("wqnb.lua").setLevel(logging.WARNING)

# %% [markdown]
# Six orders in, six invoices out. Both queues are in the one timeline:

# %%
pd.crosstab(tl.df["queue"], tl.df["event"])

# %% [markdown]
# Two pricing workers at 30 ms each: the invoices arrive in pairs.

# %%
ax = plot.gantt(tl, "shop:pricing")

# %% [markdown]
# ## Ack and nack from Lua
#
# `return value` acks; `return nil, err` nacks, and `err` is what the timeline's `error`
# column shows; so does an error raised in Lua, with its line. Nothing here is retried
# forever: the queue dead-letters after one attempt.

# %%
FAILING = r"""
namespace: t
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - name: jobs
    kind: queue.queue
    driver: t:mem
    dead_letter: {queue: t:dead, max_attempts: 1}
  - {name: dead, kind: queue.queue, driver: t:mem}
  - name: handler
    kind: function.lua
    modules: [json]
    source: |
      local json = require("json")
      return function(body)
        local job = json.decode(body)
        if job.kind == "refuse" then
          return nil, "refused job " .. job.id
        elseif job.kind == "crash" then
          local missing = nil
          return missing.field
        end
        return "ok"
      end
  - name: worker
    kind: queue.consumer
    queue: t:jobs
    func: t:handler
    lifecycle: {auto_start: true}
"""
kinds = ["ok", "refuse", "crash"]
tl = wqnb.simulate(app=FAILING, queue="t:jobs", messages=3, arrival_rate=None,
                   body=lambda i: {"id": i, "kind": kinds[i]}, seed=1)
tl.messages()[["outcome", "dead_lettered", "error"]]

# %% [markdown]
# ## What the sandbox refuses
#
# A handler runs untrusted-ish code, so its Lua has no `os`, `io`, `debug` or `package`,
# no `dofile`/`loadfile`, `load` takes text only, `require` offers only the listed
# modules, and each delivery has an instruction budget (an endless loop is stopped, even
# under `pcall`). Each probe below is one message; each refusal is a nack whose error says why.

# %%
SANDBOX = r"""
namespace: box
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - name: probes
    kind: queue.queue
    driver: box:mem
    dead_letter: {queue: box:dead, max_attempts: 1}
  - {name: dead, kind: queue.queue, driver: box:mem}
  - name: probe
    kind: function.lua
    modules: [json]
    source: |
      local json = require("json")
      local probes = {
        ["os.execute"] = function() return os.execute("ls") end,
        ["io.open"] = function() return io.open("/etc/passwd") end,
        ["require('os')"] = function() return require("os") end,
        ["require('queue')"] = function() return require("queue") end,
        ["string.dump"] = function() return string.dump(print) end,
        ["endless loop"] = function() pcall(function() while true do end end) end,
        ["json.encode"] = function() return json.encode({ok = true}) end,
      }
      return function(body)
        local name = json.decode(body).probe
        local result = probes[name]()
        return tostring(result)
      end
  - name: prober
    kind: queue.consumer
    queue: box:probes
    func: box:probe
    lifecycle: {auto_start: true}
"""
names = ["os.execute", "io.open", "require('os')", "require('queue')", "string.dump",
         "endless loop", "json.encode"]
tl = wqnb.simulate(app=SANDBOX, queue="box:probes", messages=len(names), arrival_rate=None,
                   body=lambda i: {"probe": names[i]}, seed=1)
m = tl.messages()
pd.DataFrame({"probe": names, "outcome": m["outcome"].astype(str),
              "error": m["error"].fillna("")}).set_index("probe")

# %% [markdown]
# Only the last probe is allowed: `json` was listed in `modules`.
#
# ## Try it
#
# * Add `logger` to `price_order`'s modules and log each order's total.
# * Make `file_invoice` nack invoices above 10 and give `shop:invoices` a dead-letter
#   queue: where do they end up?
# * Next: **06-live** — a real-time runtime in this kernel, watched live.
