-- Shared prelude of every redtower-jobs script. All keys of one queue share one hash tag.
local K_JOBS, K_READY, K_SCHED, K_ACTIVE = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_DONE, K_DEAD, K_LEASE, K_UNIQ = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local K_META, K_WAKE, K_EVENTS, K_SEQ = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local EV_MAX = tonumber(ARGV[1])
-- The same as text: numbers passed to redis.call are formatted on every call.
local EV_MAX_S = ARGV[1]
local PRIO = 4294967296
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function n2s(x) return string.format('%.0f', x) end
local now_s = n2s(now)
-- Flow keys (see flow.lua), set by the scripts that declare them.
local K_FWAIT, K_FDEPS, K_FOUT, K_FMSG, K_FUNSEAL

-- One command for many arguments: `cmd key a1 a2 ...`, in chunks that stay below Lua's
-- stack limit for `unpack`.
local function multi(cmd, key, args)
  for i = 1, #args, 512 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 511, #args)))
  end
end

-- `HMGET key f1 f2 ...` in the same chunks: the values, in order (false where missing).
local function hmget(key, fields)
  local out = {}
  for i = 1, #fields, 512 do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + 511, #fields)))
    for j = 1, #part do out[#out + 1] = part[j] end
  end
  return out
end

local function present(v) return v ~= nil and v ~= cjson.null and v ~= '' end

local function emit(kind, id, rec, err)
  if EV_MAX > 0 then
    if present(err) then
      redis.call('XADD', K_EVENTS, 'MAXLEN', '~', EV_MAX_S, '*', 'e', kind, 'id', id,
        'name', rec.name, 'attempt', rec.attempt, 'error', err)
    else
      redis.call('XADD', K_EVENTS, 'MAXLEN', '~', EV_MAX_S, '*', 'e', kind, 'id', id,
        'name', rec.name, 'attempt', rec.attempt)
    end
  end
end

-- Completion events of one call, written as few stream entries after the settle loop: one
-- entry carries up to 100 jobs as repeated (id, name, attempt) fields, which the reader splits
-- into one event per job. A stream entry per job was a fifth of the work script's time.
-- Appends one job's fields (`id`, `name`, `attempt`) to `events`, a list that `xadd_batched`
-- writes.
local function event_fields(events, id, name, attempt)
  local n = #events
  events[n + 1] = 'id'
  events[n + 2] = id
  events[n + 3] = 'name'
  events[n + 4] = name
  events[n + 5] = 'attempt'
  events[n + 6] = attempt
end

local done_events = {}
local function emit_completed(id, name, attempt)
  if EV_MAX > 0 then event_fields(done_events, id, name, attempt) end
end

-- Writes events of one kind as few stream entries: `events` is a flat list of (`id`, id,
-- `name`, name, `attempt`, attempt) fields, up to 100 jobs per entry.
local function xadd_batched(kind, events)
  if EV_MAX > 0 then
    for i = 1, #events, 600 do
      redis.call('XADD', K_EVENTS, 'MAXLEN', '~', EV_MAX_S, '*', 'e', kind,
        unpack(events, i, math.min(i + 599, #events)))
    end
  end
end

local function flush_completed()
  xadd_batched('completed', done_events)
end

local function wake()
  if redis.call('LLEN', K_WAKE) == 0 then redis.call('RPUSH', K_WAKE, '1') end
end

local function ready_add(id, rec)
  redis.call('ZADD', K_READY, n2s(rec.prio * PRIO + rec.seq), id)
end

-- Adds to the schedule; wakes a waiting worker when this becomes the earliest due job.
local function sched_add(id, due)
  local head = redis.call('ZRANGE', K_SCHED, 0, 0, 'WITHSCORES')
  redis.call('ZADD', K_SCHED, n2s(due), id)
  if head[2] == nil or tonumber(head[2]) > due then wake() end
end

-- A job's record, or nil and the reason when it does not decode or a field the scripts use is
-- missing or out of range: such a record is buried (see `bury`), never an error for the call.
local function decode(raw)
  local ok, rec = pcall(cjson.decode, raw)
  if not ok then return nil, 'not JSON' end
  if type(rec) ~= 'table' then return nil, 'not a JSON object' end
  if type(rec.name) ~= 'string' then return nil, 'no name' end
  for _, f in ipairs({ 'attempt', 'max', 'prio', 'seq' }) do
    local v = rec[f]
    if type(v) ~= 'number' or v ~= v or v < 0 or v > 9007199254740991 then
      return nil, 'bad ' .. f
    end
  end
  local st = rec.stalls
  if st == nil or st == cjson.null then
    rec.stalls = 0
  elseif type(st) ~= 'number' or st ~= st or st < 0 or st > 4294967295 then
    return nil, 'bad stalls'
  end
  if rec.uniq ~= nil and rec.uniq ~= cjson.null and type(rec.uniq) ~= 'string' then
    return nil, 'bad uniq'
  end
  return rec
end

local function drop_uniq(id, rec)
  if present(rec.uniq) and redis.call('HGET', K_UNIQ, rec.uniq) == id then
    redis.call('HDEL', K_UNIQ, rec.uniq)
  end
end

-- Progress and results (`p:<id>`, `r:<id>` in the jobs hash, see output.lua) go with their
-- job; only queues that ever stored one (`meta` `out`) pay for the lookup.
local has_outputs = nil
local function drop_outputs(ids)
  if has_outputs == nil then has_outputs = redis.call('HEXISTS', K_META, 'out') == 1 end
  if not has_outputs then return end
  local fields = {}
  for _, id in ipairs(ids) do
    fields[#fields + 1] = 'p:' .. id
    fields[#fields + 1] = 'r:' .. id
  end
  multi('HDEL', K_JOBS, fields)
end

local function trim(set, keep_n, keep_age)
  if keep_age > 0 then
    local old = redis.call('ZRANGEBYSCORE', set, '-inf', n2s(now - keep_age), 'LIMIT', 0, 100)
    if #old > 0 then
      multi('ZREM', set, old)
      multi('HDEL', K_JOBS, old)
      drop_outputs(old)
    end
  end
  local excess = redis.call('ZCARD', set) - keep_n
  if excess > 0 then
    local ids = redis.call('ZRANGE', set, 0, math.min(excess, 100) - 1)
    if #ids > 0 then
      multi('ZREM', set, ids)
      multi('HDEL', K_JOBS, ids)
      drop_outputs(ids)
    end
  end
end

-- A flow child's final state (c completed, d dead, r removed) goes to its own queue's outbox
-- in the same script that made it final; a relay delivers it to the parent's queue (flow.lua).
local function flow_out(id, rec, st, err, res)
  if type(rec.fp) ~= 'table' or not K_FOUT then return end
  local mid = id .. ':' .. now_s .. ':' .. st
  local m = { q = rec.fp.q, p = rec.fp.p, k = rec.fp.k, i = id, s = st }
  if present(err) then m.e = err end
  if present(res) then m.v = res end
  redis.call('HSET', K_FMSG, mid, cjson.encode(m))
  redis.call('ZADD', K_FOUT, now_s, mid)
end

-- Moves a job out of the active set into done/dead; the caller trims the set once per call.
-- The finish time is the set's score; the record is rewritten only when it changed (dirty).
-- `result`: a flow child's result (JSON text), for its parent.
local function finish(id, rec, set, keep_n, dirty, result)
  if rec.fp ~= nil then
    if set == K_DONE then flow_out(id, rec, 'c', nil, result) else flow_out(id, rec, 'd', rec.err, nil) end
  end
  drop_uniq(id, rec)
  if keep_n <= 0 then
    redis.call('HDEL', K_JOBS, id)
    drop_outputs({ id })
    return
  end
  if dirty then redis.call('HSET', K_JOBS, id, cjson.encode(rec)) end
  redis.call('ZADD', set, now_s, id)
end

-- Moves a job whose record is bad out of every live set, to dead (kept under the dead
-- retention) with a stub record that keeps the raw text as its data and the reason as its error.
local function bury(id, raw, why, keep_n)
  redis.call('ZREM', K_READY, id)
  redis.call('ZREM', K_SCHED, id)
  redis.call('ZREM', K_ACTIVE, id)
  redis.call('HDEL', K_LEASE, id)
  local rec = {
    id = id, name = '', data = tostring(raw), attempt = 0, max = 1,
    backoff = { k = 'fixed', ms = 0 }, prio = 0, seq = 0, created = now, stalls = 0,
    err = 'bad job record (' .. why .. ')', uniq = cjson.null, fin = now,
  }
  finish(id, rec, K_DEAD, keep_n, true)
  emit('dead', id, rec, rec.err)
end

-- A lease token is '<batch>.<start ms>.<i>': the start of an attempt, for its record when the
-- attempt fails, read back from the token instead of being written at fetch.
local function started_of(tok)
  return tonumber(string.match(tok, '^%d+%.(%d+)%.'))
end
