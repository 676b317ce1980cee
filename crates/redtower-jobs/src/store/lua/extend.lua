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
