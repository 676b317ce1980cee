-- Stores one cache entry, fenced by the fill lock's token.
--
-- Changes state: yes (the entry, its fill lock, its group's variant index).
-- Idempotent under re-send: yes, and it is sent with the client's usual attempts. A re-send
-- of a run whose reply was lost finds its own lock already released and its own bytes stored,
-- and answers 1 again without writing; SET of the same bytes and SADD of the same member
-- change nothing a reader can see (the TTL restarts a moment later).
--
-- KEYS[1] entry, KEYS[2] its fill lock, KEYS[3] its group's variant index (one hash tag).
-- ARGV[1] value, ARGV[2] TTL in ms, ARGV[3] lock token or '', ARGV[4] variant or '',
-- ARGV[5] the most variants a group may hold.
-- Returns 1 when written (or already written by this fill), 0 when a lost lock forbade
-- overwriting a newer entry or the group holds its most variants already.
local ttl = tonumber(ARGV[2])
if ARGV[3] ~= '' then
  if redis.call('GET', KEYS[2]) == ARGV[3] then
    redis.call('DEL', KEYS[2])
  else
    local current = redis.call('GET', KEYS[1])
    if current == ARGV[1] then
      return 1
    elseif current then
      return 0
    end
  end
end
if ARGV[4] ~= '' and redis.call('SISMEMBER', KEYS[3], ARGV[4]) == 0
    and redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[5]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
if ARGV[4] ~= '' then
  redis.call('SADD', KEYS[3], ARGV[4])
  if redis.call('PTTL', KEYS[3]) < ttl then
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
end
return 1
