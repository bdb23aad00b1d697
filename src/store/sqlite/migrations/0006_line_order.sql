-- Line order within an owner (`[daemon] prefix_grouping = false`): the claim
-- takes the earliest deadline, then the lowest id. `requests_claim` puts the
-- prefix group between the two, so that order read every pending row of the
-- owner and sorted them, on every claim; this index hands them over in order.
CREATE INDEX requests_claim_line ON requests (model, owner, deadline, id)
    WHERE state = 'pending' AND NOT private;
