-- The notifier reads only accounts' and devices' events (QR codes' and link attempts' send
-- nothing): its guards of the other aggregates are no longer read or moved. They are removed
-- here; an older instance still running during an upgrade may write a few again, which no one
-- reads and the next rebuild drops.
DELETE FROM projector_positions
WHERE projector = 'notifier' AND aggregate_type NOT IN ('account', 'device');
