-- The read side's own database. The read models arrive with the relay and projectors; this
-- first migration records which event each projector applied last, per aggregate, which is
-- the guard every projector will use to stay idempotent.
CREATE TABLE projector_positions
(
    projector      text   NOT NULL,
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    last_sequence  bigint NOT NULL CHECK (last_sequence >= 0),
    PRIMARY KEY (projector, aggregate_type, aggregate_id)
);
