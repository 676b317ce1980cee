-- Changes state: no (read only); a re-send is harmless.
-- KEYS: session records (standalone only; a Cluster reads them with plain commands). Reply: per key, 1 when the session is
-- live (the record exists, so it has not expired, and a bound session's epoch stamp still
-- matches its user's epoch), else 0. Used by revocation watches.
local out = {}
for i = 1, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'e', 'g', 'gk')
  local live = 0
  if f[1] and (not f[2] or redis.call('GET', f[3]) == f[2]) then live = 1 end
  out[i] = live
end
return out
