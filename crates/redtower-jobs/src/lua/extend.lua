-- EXTEND: pushes the deadline of leases still held by the given tokens.
-- Changes state (lease deadlines only). Idempotent under re-send: it sets a deadline of now +
-- lease_ms for each lease the token still holds (fenced), so a re-send sets the same deadline
-- a moment later and changes nothing else.
-- ARGV: ev_max, lease_ms, then (id, token) pairs. Returns the ids whose lease is lost.
local lease_ms = tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', K_LEASE, id) == ARGV[i + 1] then
    redis.call('ZADD', K_ACTIVE, 'XX', n2s(now + lease_ms), id)
  else
    lost[#lost + 1] = id
  end
end
return lost
