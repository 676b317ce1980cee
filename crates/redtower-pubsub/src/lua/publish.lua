-- pubsub_publish: appends one event to a channel's history and publishes it, atomically.
--
-- Changes state: yes (history stream, meta hash, token hashes, one PUBLISH/SPUBLISH).
-- Idempotent under re-send: yes, by an idempotency token recorded for a bounded time. The
-- caller picks a token per event (random, or its own for retries); the first run records
-- token -> '<epoch>:<offset>', and a re-sent run (the client re-sends a script whose reply
-- was lost with its connection) finds it and returns the first event's id without appending
-- or publishing anything.
-- Tokens live in two generations of hashes: KEYS[3] (current) is renamed over KEYS[4]
-- (previous) once it is ARGV[7] ms old (by Redis TIME), so a token is found for at least
-- ARGV[7] ms and at most about twice that, and costs one hash field, not one key.
--
-- KEYS[1]: meta hash (e = epoch, o = last offset, b = bytes of data in the history,
-- g = when the current token generation began, ms); KEYS[2]: history stream; KEYS[3]: the
-- current token hash; KEYS[4]: the previous token hash (all in one slot).
-- ARGV[1]: a fresh epoch, used when the history is gone; ARGV[2]: data; ARGV[3]: the most
-- events the history keeps; ARGV[4]: TTL in ms; ARGV[5]: the pub/sub channel; ARGV[6]: '1'
-- for SPUBLISH; ARGV[7]: the token window in ms; ARGV[8]: the most bytes of data the history
-- keeps (the newest event always stays); ARGV[9]: this publish's token; ARGV[10]: the W3C
-- trace context of the publishing span, one line (`<traceparent>[;<tracestate>]`, at most 568
-- bytes, checked by the client), or '' for none.
-- With a trace context, the history entry gets a field `t` after `d`, and the message is
-- prefixed with '^<trace context>\n' (an epoch never starts with '^').
local seen = redis.call('HGET', KEYS[3], ARGV[9]) or redis.call('HGET', KEYS[4], ARGV[9])
if seen then
  local e, o = string.match(seen, '^([^:]+):(%d+)$')
  if e then
    return {e, tonumber(o)}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  -- The history was lost (expired, flushed, restarted without persistence): a new epoch.
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'b', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local trace = ARGV[10] or ''
if trace ~= '' then
  redis.call('XADD', KEYS[2], offset .. '-0', 'd', ARGV[2], 't', trace)
else
  redis.call('XADD', KEYS[2], offset .. '-0', 'd', ARGV[2])
end
-- Trim exactly, oldest first, to the most events and bytes kept.
local bytes = redis.call('HINCRBY', KEYS[1], 'b', string.len(ARGV[2]))
local len = redis.call('XLEN', KEYS[2])
local max_len = tonumber(ARGV[3])
local max_bytes = tonumber(ARGV[8])
while len > 1 and (len > max_len or bytes > max_bytes) do
  local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  if not oldest then
    break
  end
  redis.call('XDEL', KEYS[2], oldest[1])
  bytes = redis.call('HINCRBY', KEYS[1], 'b', -string.len(oldest[2][2] or ''))
  len = len - 1
end
if bytes < 0 then
  redis.call('HSET', KEYS[1], 'b', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local window = tonumber(ARGV[7])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local generation = tonumber(redis.call('HGET', KEYS[1], 'g') or '0') or 0
if now - generation >= window then
  if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('RENAME', KEYS[3], KEYS[4])
  else
    redis.call('DEL', KEYS[4])
  end
  redis.call('HSET', KEYS[1], 'g', now)
end
redis.call('HSET', KEYS[3], ARGV[9], epoch .. ':' .. offset)
redis.call('PEXPIRE', KEYS[3], 2 * window)
local message = epoch .. ':' .. offset .. ':' .. ARGV[2]
if trace ~= '' then
  message = '^' .. trace .. '\n' .. message
end
if ARGV[6] == '1' then
  redis.call('SPUBLISH', ARGV[5], message)
else
  redis.call('PUBLISH', ARGV[5], message)
end
return {epoch, offset}
