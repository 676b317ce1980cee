-- Stores one cache entry, fenced by the fill lock's token.
--
-- Changes state: yes (the entry, its fill lock, its group's variant index).
-- Idempotent under re-send: yes, and it is sent with the client's usual attempts. A re-send
-- of a run whose reply was lost finds its own lock already released and its own bytes stored,
-- and answers 1 again without writing. Without a token, a re-send SETs the same bytes again and
-- ZADDs the same member with its new expiry: the index still holds the variant once, and
-- nothing a reader can see changes (the entry's TTL and its index score restart a moment later).
--
-- KEYS[1] entry, KEYS[2] its fill lock, KEYS[3] its group's variant index (one hash tag).
-- ARGV[1] value, ARGV[2] TTL in ms, ARGV[3] lock token or '', ARGV[4] variant or '',
-- ARGV[5] the most variants a group may hold.
-- The index is a sorted set: each variant scored by its entry's expiry (unix ms, Redis TIME),
-- so variants whose entries expired leave it before it is counted against ARGV[5]; the index
-- itself expires with its latest variant.
-- Returns 1 when written (or already written by this fill), 0 when a lost lock forbade
-- overwriting a newer entry or the group holds its most live variants already.
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
local variant = ARGV[4]
if variant == '' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  return 1
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if redis.call('TYPE', KEYS[3]).ok == 'set' then
  -- An index written as a plain set (no expiry per member): score each member with the
  -- set's own expiry, which covered its longest variant.
  local left = redis.call('PTTL', KEYS[3])
  local members = redis.call('SMEMBERS', KEYS[3])
  redis.call('DEL', KEYS[3])
  if left > 0 then
    for _, m in ipairs(members) do
      redis.call('ZADD', KEYS[3], now + left, m)
    end
  end
end
-- Members whose entries expired (score < now: Redis keeps a key up to its expiry ms).
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. now)
if not redis.call('ZSCORE', KEYS[3], variant)
    and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[3], now + ttl, variant)
local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[3], last[2])
return 1
