-- Appends one event to a channel's history and publishes it, atomically.
-- KEYS[1]: meta hash (e = epoch, o = last offset); KEYS[2]: history stream (same slot).
-- ARGV[1]: a fresh epoch, used when the history is gone; ARGV[2]: data; ARGV[3]: MAXLEN ~;
-- ARGV[4]: TTL in ms; ARGV[5]: the pub/sub channel; ARGV[6]: '1' for SPUBLISH.
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  -- The history was lost (expired, flushed, restarted without persistence): a new epoch.
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], offset .. '-0', 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local message = epoch .. ':' .. offset .. ':' .. ARGV[2]
if ARGV[6] == '1' then
  redis.call('SPUBLISH', ARGV[5], message)
else
  redis.call('PUBLISH', ARGV[5], message)
end
return {epoch, offset}
