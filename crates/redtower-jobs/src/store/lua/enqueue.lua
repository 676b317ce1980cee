-- ENQUEUE. Changes state: adds jobs (record, ready or schedule entry, dedup key, event).
-- Idempotent under re-send: every job carries an idempotency key, chosen by the caller or
-- drawn at random by the client before sending (so a re-sent script carries the same one).
-- KEYS[12 + i] is that key's marker (`...:idem:<key>`, in the queue's hash tag), set to the
-- job's id for `keep_ms` when the job is added. A re-sent or retried add finds the marker
-- and returns the first job's id (code 2) without adding anything: it never creates a second
-- job while the marker lives (the bounded time: the store's idempotency window for a caller's
-- key, at most a minute for a random one, which only the client's own re-send can repeat).
-- ARGV: ev_max, n, then n x (name, record_tail, max_attempts, keep_ms, priority, delay_ms,
--       uniq)
-- record_tail is the record's JSON without its opening brace and without id, seq and created.
-- Returns a flat array: id, 1 (new) | 0 (duplicate by dedup key) | 2 (already added), ...
local n = tonumber(ARGV[2])
local out = {}
local woke = false
for i = 0, n - 1 do
  local b = 3 + i * 7
  local keep = ARGV[b + 3]
  local idem = KEYS[13 + i]
  local uniq = ARGV[b + 6]
  local again = redis.call('GET', idem)
  local existing = nil
  if not again and uniq ~= '' then existing = redis.call('HGET', K_UNIQ, uniq) end
  if again then
    out[#out + 1] = again
    out[#out + 1] = 2
  elseif existing then
    redis.call('SET', idem, existing, 'PX', keep)
    out[#out + 1] = existing
    out[#out + 1] = 0
  else
    local seq = redis.call('INCR', K_SEQ)
    local id = tostring(seq)
    local rec = { name = ARGV[b], attempt = 0, prio = tonumber(ARGV[b + 4]), seq = seq }
    if uniq ~= '' then redis.call('HSET', K_UNIQ, uniq, id) end
    redis.call('HSET', K_JOBS, id,
      '{"id":"' .. id .. '","seq":' .. seq .. ',"created":' .. n2s(now) .. ',' .. ARGV[b + 1])
    redis.call('SET', idem, id, 'PX', keep)
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
end
if woke then wake() end
return out
