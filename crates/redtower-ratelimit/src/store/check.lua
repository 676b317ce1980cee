-- redtower rate limit: check every policy of one subject, all-or-nothing, in one call.
-- KEYS[i]: the counter of policy i (all KEYS share one hash tag).
-- ARGV[1]: now in µs since the epoch, or '' to read Redis TIME (only tests pass a value).
-- Then 4 values per policy, precomputed by the caller (cost included):
--   'g' (GCRA): emission interval t (µs), tolerance tau = burst * t, increment cost * t;
--   'f' (fixed window) or 's' (sliding window): limit, period (µs), cost.
--   Upper case ('G', 'F', 'S'): the same policy in shadow mode.
-- State, one string per key: GCRA '<tat>'; windows '<window> <count> <previous count>'.
-- Reply: { admitted, then per policy: allowed, remaining, reset µs, retry µs }.
-- Integer math only (Lua numbers are exact below 2^53; the layer checks the bounds). Numbers
-- passed to redis.call are sent exactly (%.17g); window states are written with %d.
-- Redis commands: TIME, one MGET for every key, then one SET ... PX per admitted policy.
local now
-- With a test clock, keys would expire by the real clock, not the given one: pad their TTLs by
-- an hour (a state past its TTL evaluates exactly like no state, so keeping it is harmless).
local pad = 0
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
  pad = 3600000
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local floor = math.floor
local function idiv(a, b)
  local q = floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
-- smallest offset e in 0..p with floor(prev * (p - e) / p) <= k
local function drops_at(prev, p, k)
  if prev <= k then return 0 end
  local m = idiv((k + 1) * p - 1, prev)
  if m > p then m = p end
  return p - m
end

local n = #KEYS
-- A key of another type (a hash from an older version) reads as nil: no state.
local vals = redis.call('MGET', unpack(KEYS))
local reply = { 1 }
local wv, wt = {}, {}
local admitted = true
local r = 1
for i = 1, n do
  local b = (i - 1) * 4 + 1
  local algo = ARGV[b + 1]
  local x, y, z = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local raw = vals[i]
  local allowed, remaining, reset, retry
  if algo == 'g' or algo == 'G' then
    -- x = t, y = tau, z = cost * t
    local tat = raw and tonumber(raw) or 0
    if tat < now then tat = now end
    local new = tat + z
    if new - now <= y then
      allowed, remaining, reset, retry = 1, idiv(y - (new - now), x), new - now, 0
      wv[i] = new
      wt[i] = new - now
    else
      allowed, remaining, reset, retry = 0, idiv(y - (tat - now), x), tat - now, new - y - now
      if remaining < 0 then remaining = 0 end
    end
  else
    -- x = limit, y = period, z = cost
    local sw, sc, sp
    if raw then
      local a, c, d = string.match(raw, '^(%d+) (%d+) (%d+)$')
      if a then sw, sc, sp = tonumber(a), tonumber(c), tonumber(d) end
    end
    local w = idiv(now, y)
    if algo == 'f' or algo == 'F' then
      local count = 0
      if sw == w then count = sc end
      local stop = (w + 1) * y - now
      if count + z <= x then
        allowed, remaining, reset, retry = 1, x - count - z, stop, 0
        wv[i] = string.format('%d %d 0', w, count + z)
        wt[i] = stop
      else
        allowed, remaining, reset, retry = 0, x - count, stop, stop
      end
      if remaining < 0 then remaining = 0 end
    else
      local cur, prev = 0, 0
      if sw == w then cur, prev = sc, sp elseif sw ~= nil and sw + 1 == w then prev = sc end
      local e = now - w * y
      local weighted = idiv(prev * (y - e), y)
      local after = cur
      if weighted + cur + z <= x then
        allowed, retry = 1, 0
        after = cur + z
        wv[i] = string.format('%d %d %d', w, after, prev)
        wt[i] = (w + 2) * y - now
      else
        allowed = 0
        local e2 = y
        if x >= cur + z then e2 = drops_at(prev, y, x - cur - z) end
        if e2 < y then
          retry = w * y + e2 - now
        else
          local k2 = x - z
          if k2 < 0 then k2 = 0 end
          local e3 = drops_at(cur, y, k2)
          if e3 < y then retry = (w + 1) * y + e3 - now else retry = (w + 2) * y - now end
        end
      end
      remaining = x - weighted - after
      if remaining < 0 then remaining = 0 end
      if after > 0 then reset = (w + 2) * y - now
      elseif prev > 0 then reset = (w + 1) * y - now
      else reset = 0 end
    end
  end
  -- Lower case: an enforcing policy.
  if allowed == 0 and (algo == 'g' or algo == 'f' or algo == 's') then admitted = false end
  reply[r + 1] = allowed
  reply[r + 2] = remaining
  reply[r + 3] = reset
  reply[r + 4] = retry
  r = r + 4
end
if admitted then
  for i = 1, n do
    local v = wv[i]
    if v then
      local ms = idiv(wt[i] + 999, 1000) + pad
      if ms < 1 then ms = 1 end
      redis.call('SET', KEYS[i], v, 'PX', ms)
    end
  end
else
  reply[1] = 0
end
return reply
