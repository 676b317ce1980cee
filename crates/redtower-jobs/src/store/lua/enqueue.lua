-- ARGV: ev_max, n, then n x (name, record_tail, max_attempts, unused, priority, delay_ms, uniq)
-- record_tail is the record's JSON without its opening brace and without id, seq and created.
-- Returns a flat array: id, 1 (new) | 0 (duplicate), ...
local n = tonumber(ARGV[2])
local out = {}
local woke = false
for i = 0, n - 1 do
  local b = 3 + i * 7
  local uniq = ARGV[b + 6]
  local existing = nil
  if uniq ~= '' then existing = redis.call('HGET', K_UNIQ, uniq) end
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = 0
  else
    local seq = redis.call('INCR', K_SEQ)
    local id = tostring(seq)
    local rec = { name = ARGV[b], attempt = 0, prio = tonumber(ARGV[b + 4]), seq = seq }
    if uniq ~= '' then redis.call('HSET', K_UNIQ, uniq, id) end
    redis.call('HSET', K_JOBS, id,
      '{"id":"' .. id .. '","seq":' .. seq .. ',"created":' .. n2s(now) .. ',' .. ARGV[b + 1])
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
