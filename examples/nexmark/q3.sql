-- Query 3: local item suggestion (people in some states selling in one
-- category): a regular join, updating neither input.
CREATE SINK nexmark_q3 WITH (connector = 'blackhole') AS
SELECT P.name, P.city, P.state, A.id
FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
WHERE A.category = 10 AND (P.state = 'or' OR P.state = 'id' OR P.state = 'ca');
