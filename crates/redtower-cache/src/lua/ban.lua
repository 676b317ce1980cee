-- Records a prefix ban: every entry whose key starts with ARGV[1] and that was stored until
-- now + ARGV[2] ms (allowance for the instances' clocks) is banned. KEYS[1] the ban list's
-- version ("<version>:<horizon>"), KEYS[2] the ban list (hash: prefix -> ban time, unix ms).
-- ARGV[3] the most bans kept, ARGV[4] the longest time an entry lives (ms): older bans are
-- dropped, and both keys live that long after the last ban.
--
-- Changes state: yes (adds a ban, drops covered or expired ones, bumps the version). Safe to
-- re-send: a second run re-records the same prefix with a time a few milliseconds later,
-- which only bans the entries stored between the two runs as well (a miss, never a banned
-- entry served).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = ARGV[1]
local at = now + tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local max_age = tonumber(ARGV[4])
local version, horizon = 0, 0
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, ':', 1, true)
  if sep then
    version = tonumber(string.sub(current, 1, sep - 1)) or 0
    horizon = tonumber(string.sub(current, sep + 1)) or 0
  end
end
if horizon + max_age <= now then
  horizon = 0
end
local all = redis.call('HGETALL', KEYS[2])
local n, oldest, oldest_at = 0, nil, nil
for i = 1, #all, 2 do
  local p, pat = all[i], tonumber(all[i + 1]) or 0
  if (string.sub(p, 1, #prefix) == prefix and pat <= at) or pat + max_age <= now then
    redis.call('HDEL', KEYS[2], p)
  else
    n = n + 1
    if oldest_at == nil or pat < oldest_at then
      oldest, oldest_at = p, pat
    end
  end
end
if n >= max and oldest then
  -- Over the bound: the oldest ban goes, and every entry stored before it is banned.
  redis.call('HDEL', KEYS[2], oldest)
  if oldest_at > horizon then
    horizon = oldest_at
  end
end
redis.call('HSET', KEYS[2], prefix, string.format('%.0f', at))
-- Strictly increasing, also across an expiry of the list: never a version an instance saw
-- for another list.
local micros = tonumber(t[1]) * 1000000 + tonumber(t[2])
version = math.max(version + 1, micros)
redis.call('SET', KEYS[1], string.format('%.0f:%.0f', version, horizon), 'PX', max_age)
redis.call('PEXPIRE', KEYS[2], max_age)
return 1
