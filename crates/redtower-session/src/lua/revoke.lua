-- Changes state: yes (deletes one session of the user and its index entry).
-- Re-send: idempotent in effect (a second run finds the session gone and changes nothing); its
-- reply is then 0, so a caller whose first reply was lost learns "not found" while the session
-- is revoked all the same.
-- KEYS[1] record, KEYS[2] index; ARGV user
local f = redis.call('HMGET', KEYS[1], 'u', 'h')
if f[1] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], f[2])
fix_index(KEYS[2])
return 1
