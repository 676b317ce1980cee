-- ENQUEUE. Changes state: adds jobs (record, ready or schedule entry, dedup key, event).
-- Idempotent under re-send, two ways:
-- * The call: KEYS[13] (`...:add:<id>`, in the queue's hash tag) is keyed by a random id the
--   client draws before sending, the same when the client re-sends the call after a lost
--   reply. The first run stores its answer there for `call_keep_ms` (at most a minute); a
--   re-send finds it and answers with the same ids (code 2, "already added") and adds nothing.
-- * A caller's idempotency key: job i with one names its marker KEYS[ARGV key_index]
--   (`...:idem:<key>`), set to the job's id for `keep_ms` (the store's idempotency window).
--   A later add with the same key (the caller retrying) finds it and answers with the first
--   job's id (code 2) without adding anything.
-- One call may carry many jobs (an `add_bulk`, or the single adds the client coalesced while
-- an earlier call was on the wire). Its writes are batched: the ids come from one `INCR` and
-- one `INCRBY` of the sequence, the records go in one `HSET` and the ready entries in one
-- `ZADD` per 256 jobs, and the `added` events in one stream entry per 100 jobs (repeated id,
-- name, attempt fields; the reader yields one event per job, as for completions).
-- Fair turns: each job's `seq` (its place among jobs of equal priority) is its turn,
-- max(V, the last turn of its group) + 1 (see quota.lua; ungrouped jobs are one group, meta
-- `fu`). KEYS[14] is the group-turn ZSET. A turn is never above the `seq` counter, so jobs added
-- by schedulers (numbered from the counter) never jump ahead of waiting ones. The ready score
-- is priority * 2^32 + turn.
-- ARGV: ev_max, n, keep_ms, call_keep_ms, width (2 or 7), then n x (name, record_tail,
--       key_index | 0, priority, delay_ms, uniq, group | ''). A call whose jobs have no
--       idempotency key, dedup key, group, priority or delay (most adds) has width 2: each job
--       is only its name and record tail.
-- record_tail is the record's JSON without its opening brace and without id, seq and created.
-- Returns a flat array: id, 1 (new) | 0 (duplicate by dedup key) | 2 (already added), ...
local n = tonumber(ARGV[2])
local keep, call_keep = ARGV[3], ARGV[4]
local K_CALL = KEYS[13]
local K_GF = KEYS[14]

local prev = redis.call('GET', K_CALL)
if prev then
  -- The ids of the first run, separated by spaces.
  local out = {}
  for id in string.gmatch(prev, '%S+') do
    out[#out + 1] = id
    out[#out + 1] = 2
  end
  return out
end

local out = {}
local ids = {}
local first, seq = nil, nil
local recs, ready, sched, events = {}, {}, {}, {}
local earliest = nil
local MV = redis.call('HMGET', K_META, 'vt', 'fu')
local V = tonumber(MV[1])
if not V then
  V = tonumber(redis.call('GET', K_SEQ)) or 0
  redis.call('HSET', K_META, 'vt', n2s(V))
end
local fu, fu_dirty, fg = tonumber(MV[2]) or 0, false, {}
local width = tonumber(ARGV[5])
for i = 0, n - 1 do
  local b = 6 + i * width
  local ki, prio, delay, uniq, group = 0, '0', 0, '', ''
  if width > 2 then
    ki, prio, delay = tonumber(ARGV[b + 2]), ARGV[b + 3], tonumber(ARGV[b + 4])
    uniq, group = ARGV[b + 5], ARGV[b + 6]
  end
  local idem = nil
  if ki > 0 then idem = KEYS[ki] end
  local again = idem and redis.call('GET', idem)
  local existing = nil
  if not again and uniq ~= '' then existing = redis.call('HGET', K_UNIQ, uniq) end
  if again then
    out[#out + 1] = again
    out[#out + 1] = 2
  elseif existing then
    if idem then redis.call('SET', idem, existing, 'PX', keep) end
    out[#out + 1] = existing
    out[#out + 1] = 0
  else
    -- The first new job takes its id with `INCR`, the others count on from it; one `INCRBY`
    -- after the loop moves the sequence past them.
    if first then
      seq = seq + 1
    else
      seq = redis.call('INCR', K_SEQ)
      first = seq
    end
    local id = tostring(seq)
    local turn = nil
    if group == '' then
      turn = math.max(V, fu) + 1
      fu, fu_dirty = turn, true
    else
      local f = fg[group]
      if f == nil then f = tonumber(redis.call('ZSCORE', K_GF, group)) or 0 end
      turn = math.max(V, f) + 1
      fg[group] = turn
    end
    local turn_s = n2s(turn)
    if uniq ~= '' then redis.call('HSET', K_UNIQ, uniq, id) end
    recs[#recs + 1] = id
    recs[#recs + 1] = '{"id":"' .. id .. '","seq":' .. turn_s .. ',"created":' .. now_s .. ','
      .. ARGV[b + 1]
    if idem then redis.call('SET', idem, id, 'PX', keep) end
    if delay > 0 then
      local due = now + delay
      sched[#sched + 1] = n2s(due)
      sched[#sched + 1] = id
      if earliest == nil or due < earliest then earliest = due end
    else
      -- The score is priority * 2^32 + turn (see `ready_add`); without a priority, the turn.
      if prio == '0' then
        ready[#ready + 1] = turn_s
      else
        ready[#ready + 1] = n2s(tonumber(prio) * PRIO + turn)
      end
      ready[#ready + 1] = id
    end
    event_fields(events, id, ARGV[b], '0')
    out[#out + 1] = id
    out[#out + 1] = 1
  end
  ids[#ids + 1] = out[#out - 1]
end
if first and seq > first then redis.call('INCRBY', K_SEQ, seq - first) end
if #recs > 0 then multi('HSET', K_JOBS, recs) end
local woke = #ready > 0
if woke then multi('ZADD', K_READY, ready) end
if #sched > 0 then
  -- Wakes a waiting worker when a job becomes the earliest due one.
  local head = redis.call('ZRANGE', K_SCHED, 0, 0, 'WITHSCORES')
  multi('ZADD', K_SCHED, sched)
  if head[2] == nil or tonumber(head[2]) > earliest then woke = true end
end
xadd_batched('added', events)
if woke then wake() end
if fu_dirty then redis.call('HSET', K_META, 'fu', n2s(fu)) end
for g, f in pairs(fg) do redis.call('ZADD', K_GF, n2s(f), g) end
redis.call('SET', K_CALL, table.concat(ids, ' '), 'PX', call_keep)
return out
