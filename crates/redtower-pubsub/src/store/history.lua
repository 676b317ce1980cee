-- Reads a channel's epoch, last offset and (optionally) the events from an offset on.
-- KEYS[1]: meta hash; KEYS[2]: history stream (same slot).
-- ARGV[1]: the first offset wanted; ARGV[2]: at most this many events (0: none).
local meta = redis.call('HMGET', KEYS[1], 'e', 'o')
if not meta[1] then
  return {'', 0, {}}
end
local top = tonumber(meta[2]) or 0
local entries = {}
local count = tonumber(ARGV[2])
if count > 0 and top >= tonumber(ARGV[1]) then
  entries = redis.call('XRANGE', KEYS[2], ARGV[1] .. '-0', '+', 'COUNT', count)
end
return {meta[1], top, entries}
