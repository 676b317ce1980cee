-- Changes state: yes (deletes the record and its index entry: logout).
-- Re-send: idempotent (a second run finds nothing and changes nothing).
-- KEYS[1] record
local f = redis.call('HMGET', KEYS[1], 'h', 'ik')
if not f[1] then return 0 end
kill(KEYS[1], f[1], f[2])
return 1
