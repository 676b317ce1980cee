-- Changes state: yes (at most one SET per counter key).
-- Idempotent under re-send: NO (a re-sent refund gives the units back twice, bounded by a
-- full allowance). Sent like the check: one attempt, never re-sent by the client.
-- redtower rate limit: give back the units that one admitted request consumed, for
-- `RedisStore::refund`, with the arithmetic of `model::refund` (the reference; the conformance
-- suite runs both):
--   GCRA: tat moves back by cost x t, never before now (a full bucket stays full);
--   fixed window: the request's window count drops by cost (never below 0), only while that
--     window is the current one;
--   sliding window: the request's window count drops by cost (never below 0) while that
--     window is the current or the previous one (stored as the current one's `prev` once the
--     next window has been written).
-- KEYS: the counter keys of the policies that consumed (one slot).
-- ARGV[1]: now in µs or '' for Redis TIME; ARGV[2]: the instant the request was checked at
-- (µs, from the check's reply); then per key 4 values: the policy's code and numbers exactly
-- as the check takes them (see `Sender` in src/store/redis.rs; the numbers include the cost).
local now
local pad = 0
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
  pad = 3600000
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local at = tonumber(ARGV[2])
local floor = math.floor
local function idiv(a, b)
  local q = floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local given = 0
for i = 1, #KEYS do
  local a = 3 + (i - 1) * 4
  local algo = string.lower(ARGV[a])
  local x, y, z = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local raw = redis.call('GET', KEYS[i])
  if raw then
    if algo == 'g' then
      -- x = t, y = tau, z = cost * t
      local tat = tonumber(raw)
      if tat and tat > now then
        local new = tat - z
        if new < now then new = now end
        if new == now then
          redis.call('DEL', KEYS[i])
        else
          redis.call('SET', KEYS[i], string.format('%d', new), 'PX', idiv(new - now + 999, 1000) + pad)
        end
        given = given + 1
      end
    else
      -- x = limit, y = period, z = cost
      local p, c, d = string.match(raw, '^(%d+) (%d+) (%d+)$')
      if p then
        local sw, sc, sp = tonumber(p), tonumber(c), tonumber(d)
        local w, w0 = idiv(now, y), idiv(at, y)
        local nc, np = nil, nil
        if algo == 'f' then
          if sw == w0 and sw == w then nc, np = sc - z, sp end
        else
          if sw == w0 and (w == w0 or w == w0 + 1) then
            nc, np = sc - z, sp
          elseif sw == w0 + 1 and w == sw then
            nc, np = sc, sp - z
          end
        end
        if nc then
          if nc < 0 then nc = 0 end
          if np < 0 then np = 0 end
          redis.call('SET', KEYS[i], string.format('%d %d %d', sw, nc, np), 'KEEPTTL')
          given = given + 1
        end
      end
    end
  end
end
return given
