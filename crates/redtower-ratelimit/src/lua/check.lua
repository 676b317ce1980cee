-- Changes state: yes (one SET ... PX per counter an admitted request consumes).
-- Idempotent under re-send: NO. A re-sent call would consume every admitted request of the
-- batch a second time (a request counted twice, a client limited early). It is therefore sent
-- with ONE attempt: RedisStore's options set `max_attempts: Some(1)` (and `fail_fast`, under
-- which fred does not re-send an in-flight command either), so fred never re-sends it after a
-- lost reply or a reconnect; the caller gets an error instead (the layer applies its failure
-- policy), and the script ran at most once. A NOSCRIPT reply means the script did
-- not run, so it is loaded and sent again (still one attempt each). An idempotency token is
-- not used: a check must not cost a second write per request, and the one-attempt send is
-- enough because a lost check is not retried by anyone (the request it decided has moved on).
-- Proved by tests/retry.rs (a lost reply through a fault proxy counts once; a chaos run),
-- which fails when the store's options allow a re-send.
-- redtower rate limit: check a batch of requests, each against every policy of its subject,
-- all-or-nothing per request, in one call. The requests are evaluated in order at one instant,
-- exactly as if they had been sent one after another: a request sees what the ones before it
-- consumed. A batch of one is the plain check.
-- KEYS, ARGV and the packed reply are specified in one place: the doc comment of `Sender` in
-- src/store/redis.rs ("The protocol between `Sender` and `src/lua/check.lua`"). Change the
-- two together.
-- State, one string per key: GCRA '<tat>'; windows '<window> <count> <previous count>'.
-- The reply is one bulk string instead of an integer per value, which the client reads
-- without parsing a frame per value.
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

-- The batch's policies (see the protocol), parsed once: code, its three numbers, enforcing;
-- for an overridable policy its override field and default limit.
local sa, sx, sy, sz, se, so, sl = {}, {}, {}, {}, {}, {}, {}
local a = 3
for s = 1, tonumber(ARGV[2]) do
  local algo = ARGV[a]
  if #algo > 1 then
    local o, al, name, lim = string.match(algo, '^([oO])(%a):(.+):(%d+)$')
    so[s], sl[s] = name, tonumber(lim)
    if o == 'O' then algo = string.upper(al) else algo = al end
  end
  sa[s] = algo
  sx[s], sy[s], sz[s] = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  se[s] = algo == 'g' or algo == 'f' or algo == 's'
  a = a + 4
end

-- A key of another type (a hash from an older version) reads as nil: no state.
-- The state of each key as the batch goes: false = none.
local cur = redis.call('MGET', unpack(KEYS))
-- What the batch writes, per key index: value and TTL in µs.
local wv, wt = {}, {}
-- The pending writes of the current request, per policy.
local pk, pv, pt = {}, {}, {}
local reply = {}
local r = 0
local pack = struct.pack
local req = ARGV[a]
local byte = string.byte
local b = 1
while b < #req do
  local n1, n2 = byte(req, b, b + 1)
  local n = n1 * 256 + n2
  b = b + 2
  r = r + 1
  local head = r
  local admitted = true
  local np = 0
  for _ = 1, n do
    local k1, k2, s1, s2 = byte(req, b, b + 3)
    local k, s = k1 * 256 + k2 + 1, s1 * 256 + s2 + 1
    b = b + 4
    local algo, x, y, z = sa[s], sx[s], sy[s], sz[s]
    if so[s] then
      -- Overridable: x = period, y = default capacity, z = cost; the subject's override
      -- hash (the key whose index follows) may replace the limit (and the capacity).
      local o1, o2 = byte(req, b, b + 1)
      b = b + 2
      local lim, cap = sl[s], y
      local ov = tonumber(redis.call('HGET', KEYS[o1 * 256 + o2 + 1], so[s]) or '')
      if ov and ov >= 1 and ov <= 4294967295 and ov == floor(ov) then lim, cap = ov, ov end
      if algo == 'g' or algo == 'G' then
        local t = idiv(x + lim - 1, lim)
        if cap * t >= 4503599627370496 then
          lim, cap = sl[s], y
          t = idiv(x + lim - 1, lim)
        end
        x, y, z = t, cap * t, z * t
      else
        if algo ~= 'f' and algo ~= 'F' and lim * x >= 9007199254740992 then lim = sl[s] end
        x, y, z = lim, x, z
      end
    end
    local raw = cur[k]
    local allowed, remaining, reset, retry
    if algo == 'g' or algo == 'G' then
      -- x = t, y = tau, z = cost * t
      local tat = raw and tonumber(raw) or 0
      if tat < now then tat = now end
      local new = tat + z
      if new - now <= y then
        allowed, remaining, reset, retry = 1, idiv(y - (new - now), x), new - now, 0
        np = np + 1
        pk[np], pv[np], pt[np] = k, new, new - now
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
          np = np + 1
          pk[np], pv[np], pt[np] = k, string.format('%d %d 0', w, count + z), stop
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
          np = np + 1
          pk[np], pv[np], pt[np] = k, string.format('%d %d %d', w, after, prev), (w + 2) * y - now
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
    if allowed == 0 and se[s] then admitted = false end
    r = r + 1
    reply[r] = pack('>Bddd', allowed, remaining, reset, retry)
  end
  if admitted then
    reply[head] = pack('>Bd', 1, now)
    for i = 1, np do
      local k = pk[i]
      cur[k] = pv[i]
      wv[k] = pv[i]
      wt[k] = pt[i]
    end
  else
    reply[head] = pack('>Bd', 0, now)
  end
end
for k = 1, #KEYS do
  local v = wv[k]
  if v then
    local ms = idiv(wt[k] + 999, 1000) + pad
    if ms < 1 then ms = 1 end
    redis.call('SET', KEYS[k], v, 'PX', ms)
  end
end
return table.concat(reply)
