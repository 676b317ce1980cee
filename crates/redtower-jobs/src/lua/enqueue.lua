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
-- ARGV: ev_max, n, keep_ms, call_keep_ms, then n x (name, record_tail, max_attempts,
--       key_index | 0, priority, delay_ms, uniq)
-- record_tail is the record's JSON without its opening brace and without id, seq and created.
-- Returns a flat array: id, 1 (new) | 0 (duplicate by dedup key) | 2 (already added), ...
local n = tonumber(ARGV[2])
local keep, call_keep = ARGV[3], ARGV[4]
local K_CALL = KEYS[13]

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
local woke = false
for i = 0, n - 1 do
  local b = 5 + i * 7
  local ki = tonumber(ARGV[b + 3])
  local idem = nil
  if ki > 0 then idem = KEYS[ki] end
  local uniq = ARGV[b + 6]
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
    local seq = redis.call('INCR', K_SEQ)
    local id = tostring(seq)
    local rec = { name = ARGV[b], attempt = 0, prio = tonumber(ARGV[b + 4]), seq = seq }
    if uniq ~= '' then redis.call('HSET', K_UNIQ, uniq, id) end
    redis.call('HSET', K_JOBS, id,
      '{"id":"' .. id .. '","seq":' .. seq .. ',"created":' .. n2s(now) .. ',' .. ARGV[b + 1])
    if idem then redis.call('SET', idem, id, 'PX', keep) end
    local delay = tonumber(ARGV[b + 5])
    if delay > 0 then
      sched_add(id, now + delay)
    else
      ready_add(id, rec)
      woke = true
    end
    emit('added', id, rec, nil)
    out[#out + 1] = id
    out[#out + 1] = 1
  end
  ids[#ids + 1] = out[#out - 1]
end
if woke then wake() end
redis.call('SET', K_CALL, table.concat(ids, ' '), 'PX', call_keep)
return out
