-- redtower rate limit: check a batch of requests, each against every policy of its subject,
-- all-or-nothing per request, in one call. The requests are evaluated in order at one instant,
-- exactly as if they had been sent one after another: a request sees what the ones before it
-- consumed. A batch of one is the plain check.
-- KEYS: the counters of request 1's policies, then request 2's, ... (on a Cluster every key
-- of one call shares one slot).
-- ARGV[1]: now in µs since the epoch, or '' to read Redis TIME (only tests pass a value).
-- ARGV[2]: the number of requests. Then per request: its number of policies n, then 4 values
-- per policy, precomputed by the caller (cost included):
--   'g' (GCRA): emission interval t (µs), tolerance tau = burst * t, increment cost * t;
--   'f' (fixed window) or 's' (sliding window): limit, period (µs), cost.
--   Upper case ('G', 'F', 'S'): the same policy in shadow mode.
-- State, one string per key: GCRA '<tat>'; windows '<window> <count> <previous count>'.
-- Reply, per request in order: { admitted, then per policy: allowed, remaining, reset µs,
-- retry µs }.
-- Integer math only (Lua numbers are exact below 2^53; the layer checks the bounds). Numbers
-- passed to redis.call are sent exactly (%.17g); window states are written with %d.
-- Redis commands: TIME, one MGET for every key, then one SET ... PX per key an admitted
-- request wrote (the last value of each key).
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

-- A key of another type (a hash from an older version) reads as nil: no state.
local vals = redis.call('MGET', unpack(KEYS))
-- The state of each key as the batch goes: false = none.
local cur = {}
for i = 1, #KEYS do
  if cur[KEYS[i]] == nil then cur[KEYS[i]] = vals[i] or false end
end
local wv, wt = {}, {}
local reply = {}
local a = 3
local kb = 0
for _ = 1, tonumber(ARGV[2]) do
  local n = tonumber(ARGV[a])
  a = a + 1
  local head = #reply + 1
  reply[head] = 1
  local r = head
  local nv, nt = {}, {}
  local admitted = true
  for i = 1, n do
    local algo = ARGV[a]
    local x, y, z = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    a = a + 4
    local raw = cur[KEYS[kb + i]]
    local allowed, remaining, reset, retry
    if algo == 'g' or algo == 'G' then
      -- x = t, y = tau, z = cost * t
      local tat = raw and tonumber(raw) or 0
      if tat < now then tat = now end
      local new = tat + z
      if new - now <= y then
        allowed, remaining, reset, retry = 1, idiv(y - (new - now), x), new - now, 0
        nv[i] = new
        nt[i] = new - now
      else
        allowed, remaining, reset, retry = 0, idiv(y - (tat - now), x), tat - now, new - y - now
        if remaining < 0 then remaining = 0 end
      end
    else
      -- x = limit, y = period, z = cost
      local sw, sc, sp
      if raw then
        local p, c, d = string.match(raw, '^(%d+) (%d+) (%d+)$')
        if p then sw, sc, sp = tonumber(p), tonumber(c), tonumber(d) end
      end
      local w = idiv(now, y)
      if algo == 'f' or algo == 'F' then
        local count = 0
        if sw == w then count = sc end
        local stop = (w + 1) * y - now
        if count + z <= x then
          allowed, remaining, reset, retry = 1, x - count - z, stop, 0
          nv[i] = string.format('%d %d 0', w, count + z)
          nt[i] = stop
        else
          allowed, remaining, reset, retry = 0, x - count, stop, stop
        end
        if remaining < 0 then remaining = 0 end
      else
        local cnt, prev = 0, 0
        if sw == w then cnt, prev = sc, sp elseif sw ~= nil and sw + 1 == w then prev = sc end
        local e = now - w * y
        local weighted = idiv(prev * (y - e), y)
        local after = cnt
        if weighted + cnt + z <= x then
          allowed, retry = 1, 0
          after = cnt + z
          nv[i] = string.format('%d %d %d', w, after, prev)
          nt[i] = (w + 2) * y - now
        else
          allowed = 0
          local e2 = y
          if x >= cnt + z then e2 = drops_at(prev, y, x - cnt - z) end
          if e2 < y then
            retry = w * y + e2 - now
          else
            local k2 = x - z
            if k2 < 0 then k2 = 0 end
            local e3 = drops_at(cnt, y, k2)
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
      local v = nv[i]
      if v then
        local key = KEYS[kb + i]
        cur[key] = v
        wv[key] = v
        wt[key] = nt[i]
      end
    end
  else
    reply[head] = 0
  end
  kb = kb + n
end
for key, v in pairs(wv) do
  local ms = idiv(wt[key] + 999, 1000) + pad
  if ms < 1 then ms = 1 end
  redis.call('SET', key, v, 'PX', ms)
end
return reply
