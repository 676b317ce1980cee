-- Stores one cache entry, fenced by the fill lock's token.
-- KEYS[1] entry, KEYS[2] its fill lock, KEYS[3] its group's variant index (one hash tag).
-- ARGV[1] value, ARGV[2] TTL in ms, ARGV[3] lock token or '', ARGV[4] variant or ''.
-- Returns 1 when written, 0 when a lost lock forbade overwriting a newer entry.
local ttl = tonumber(ARGV[2])
if ARGV[3] ~= '' then
  if redis.call('GET', KEYS[2]) == ARGV[3] then
    redis.call('DEL', KEYS[2])
  elseif redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
if ARGV[4] ~= '' then
  redis.call('SADD', KEYS[3], ARGV[4])
  if redis.call('PTTL', KEYS[3]) < ttl then
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
end
return 1
