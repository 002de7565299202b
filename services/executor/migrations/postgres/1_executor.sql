-- The executor keeps no state of its own: runs live in the jobs service. Its database holds
-- only the messaging tables (the dead letters of its queue, the outbox of its audit events).
SELECT 1;
