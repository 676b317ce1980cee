-- Changes state: yes, only to prune (deletes expired or revoked records and stale index
-- entries met on the way). Re-send: idempotent (pruning twice prunes nothing more).
-- Work: at most ARGV[2] index entries (the per-user cap; the index is kept at the cap by
-- create), the most recent ones.
-- KEYS[1] index, KEYS[2] epoch; ARGV record key prefix, max sessions per user
-- Returns { {handle, created, last seen, expiry, meta} per live session, {handle} per session
-- found expired (idle or absolute timeout) and pruned by this call }; prunes the rest.
local ik, gk = KEYS[1], KEYS[2]
local now = now_ms()
local expired = {}
-- Entries past their expiry: the record is gone (its TTL ran out) or timed out.
for _, h in ipairs(redis.call('ZRANGEBYSCORE', ik, '-inf', now)) do
  local rk = ARGV[1] .. h
  local f = redis.call('HMGET', rk, 'e', 'x')
  if not f[1] or now >= tonumber(f[1]) or now >= tonumber(f[2]) then
    redis.call('DEL', rk)
    table.insert(expired, h)
  end
end
redis.call('ZREMRANGEBYSCORE', ik, '-inf', now)
local g = redis.call('GET', gk)
local out = {}
for _, h in ipairs(redis.call('ZRANGE', ik, -tonumber(ARGV[2]), -1)) do
  local rk = ARGV[1] .. h
  local f = redis.call('HMGET', rk, 'c', 'a', 'e', 'm', 'g', 'x')
  if not f[1] then
    redis.call('ZREM', ik, h)
  elseif f[5] ~= g or now >= tonumber(f[6]) or now >= tonumber(f[3]) then
    if f[5] == g then table.insert(expired, h) end
    redis.call('DEL', rk)
    redis.call('ZREM', ik, h)
  else
    table.insert(out, {h, f[1], f[2], f[3], f[4] or ''})
  end
end
fix_index(ik)
return {out, expired}
