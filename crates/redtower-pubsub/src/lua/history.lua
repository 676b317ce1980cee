-- pubsub_history: reads a channel's epoch, last offset and (optionally) the events from an
-- offset on.
--
-- Changes state: no (HMGET, XRANGE only). Idempotent under re-send: yes, a pure read.
--
-- Nothing is read from the stream unless the request can be served whole: the epoch matches
-- (when one is given), the wanted range is within the event limit, and the data fits the byte
-- limit (read in chunks, stopping as soon as it does not). A cursor from another epoch, or one
-- too far behind, costs one HMGET.
--
-- KEYS[1]: meta hash; KEYS[2]: history stream (same slot).
-- ARGV[1]: the epoch the reader is in ('' for any); ARGV[2]: the first offset wanted;
-- ARGV[3]: at most this many events (0: read none); ARGV[4]: at most this many bytes of data.
-- Returns {epoch or '', last offset, entries, 1 when the byte limit was exceeded else 0}.
local meta = redis.call('HMGET', KEYS[1], 'e', 'o')
if not meta[1] then
  return {'', 0, {}, 0}
end
local top = tonumber(meta[2]) or 0
local from = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
if (ARGV[1] ~= '' and ARGV[1] ~= meta[1]) or not from or count == 0 or from > top
    or top - from + 1 > count then
  return {meta[1], top, {}, 0}
end
local max_bytes = tonumber(ARGV[4])
local entries = {}
local bytes = 0
local start = ARGV[2] .. '-0'
local left = top - from + 1
while left > 0 do
  local chunk = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', math.min(left, 64))
  if #chunk == 0 then
    break
  end
  for _, entry in ipairs(chunk) do
    bytes = bytes + string.len(entry[2][2] or '')
    if bytes > max_bytes then
      return {meta[1], top, {}, 1}
    end
    entries[#entries + 1] = entry
  end
  left = left - #chunk
  start = '(' .. chunk[#chunk][1]
end
return {meta[1], top, entries, 0}
