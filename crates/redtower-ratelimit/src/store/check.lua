-- redtower rate limit: check every policy of one subject, all-or-nothing, in one call.
-- KEYS[i]: the counter of policy i (all KEYS share one hash tag).
-- ARGV[1]: now in µs since the epoch, or '' to read Redis TIME (only tests pass a value).
-- ARGV[2]: cost.
-- Then 5 values per policy: algorithm ('g' GCRA, 'f' fixed window, 's' sliding window),
-- limit, period (µs), capacity (GCRA burst), shadow ('1' or '0').
-- Reply: { admitted, then per policy: allowed, remaining, reset µs, retry µs }.
-- Integer math only (Lua numbers are exact below 2^53; the layer checks the bounds).
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
local cost = tonumber(ARGV[2])

local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local function int(x) return string.format('%.0f', x) end
local function ms(us)
  local m = idiv(us + 999, 1000) + pad
  if m < 1 then m = 1 end
  return int(m)
end
-- smallest offset e in 0..p with floor(prev * (p - e) / p) <= k
local function drops_at(prev, p, k)
  if prev <= k then return 0 end
  local m = idiv((k + 1) * p - 1, prev)
  if m > p then m = p end
  return p - m
end

local n = #KEYS
local reply = { 1 }
local writes = {}
local admitted = true
for i = 1, n do
  local b = 2 + (i - 1) * 5
  local algo = ARGV[b + 1]
  local limit = tonumber(ARGV[b + 2])
  local p = tonumber(ARGV[b + 3])
  local cap = tonumber(ARGV[b + 4])
  local shadow = ARGV[b + 5] == '1'
  local key = KEYS[i]
  local allowed, remaining, reset, retry
  if algo == 'g' then
    local t = idiv(p + limit - 1, limit)
    local tau = cap * t
    -- A key of another type (the policy's algorithm changed) counts as no state.
    local raw = redis.pcall('GET', key)
    if type(raw) ~= 'string' then raw = '0' end
    local tat = tonumber(raw) or 0
    if tat < now then tat = now end
    local new = tat + cost * t
    if new - now <= tau then
      allowed, remaining, reset, retry = 1, idiv(tau - (new - now), t), new - now, 0
      writes[i] = { 'SET', key, int(new), 'PX', ms(new - now) }
    else
      allowed, remaining, reset, retry = 0, idiv(tau - (tat - now), t), tat - now, new - tau - now
      if remaining < 0 then remaining = 0 end
    end
  else
    local h = redis.pcall('HMGET', key, 'w', 'c', 'p')
    local stale = h.err ~= nil
    if stale then h = {} end
    local sw, sc, sp = tonumber(h[1] or ''), tonumber(h[2] or '0') or 0, tonumber(h[3] or '0') or 0
    local w = idiv(now, p)
    if algo == 'f' then
      local count = 0
      if sw == w then count = sc end
      local stop = (w + 1) * p - now
      if count + cost <= limit then
        allowed, remaining, reset, retry = 1, limit - count - cost, stop, 0
        writes[i] = { 'HSET', key, 'w', int(w), 'c', int(count + cost), 'p', '0' }
        writes[i].ttl = ms(stop)
        writes[i].stale = stale
      else
        allowed, remaining, reset, retry = 0, limit - count, stop, stop
      end
      if remaining < 0 then remaining = 0 end
    else
      local cur, prev = 0, 0
      if sw == w then cur, prev = sc, sp elseif sw ~= nil and sw + 1 == w then prev = sc end
      local e = now - w * p
      local weighted = idiv(prev * (p - e), p)
      local after = cur
      if weighted + cur + cost <= limit then
        allowed, retry = 1, 0
        after = cur + cost
        writes[i] = { 'HSET', key, 'w', int(w), 'c', int(after), 'p', int(prev) }
        writes[i].ttl = ms((w + 2) * p - now)
        writes[i].stale = stale
      else
        allowed = 0
        local e2 = p
        if limit >= cur + cost then e2 = drops_at(prev, p, limit - cur - cost) end
        if e2 < p then
          retry = w * p + e2 - now
        else
          local k2 = limit - cost
          if k2 < 0 then k2 = 0 end
          local e3 = drops_at(cur, p, k2)
          if e3 < p then retry = (w + 1) * p + e3 - now else retry = (w + 2) * p - now end
        end
      end
      remaining = limit - weighted - after
      if remaining < 0 then remaining = 0 end
      if after > 0 then reset = (w + 2) * p - now
      elseif prev > 0 then reset = (w + 1) * p - now
      else reset = 0 end
    end
  end
  if allowed == 0 and not shadow then admitted = false end
  reply[#reply + 1] = allowed
  reply[#reply + 1] = remaining
  reply[#reply + 1] = reset
  reply[#reply + 1] = retry
end
if admitted then
  for i = 1, n do
    local wr = writes[i]
    if wr then
      if wr.stale then redis.call('DEL', KEYS[i]) end
      redis.call(unpack(wr))
      if wr.ttl then redis.call('PEXPIRE', KEYS[i], wr.ttl) end
    end
  end
else
  reply[1] = 0
end
return reply
