-- Rows for the Pagila schema (../shared/fixtures/pagila-schema.sql), generated: enough of every
-- kind of column (enum, domain, array, tsvector, vector, bytea, partitions) to prove a round trip.
SET session_replication_role = replica;  -- store <-> staff reference each other
INSERT INTO language(name) SELECT 'Language ' || i FROM generate_series(1, 6) i;
INSERT INTO country(country) SELECT 'Country ' || i FROM generate_series(1, 20) i;
INSERT INTO city(city, country_id) SELECT 'City ' || i, 1 + i % 20 FROM generate_series(1, 60) i;
INSERT INTO address(address, district, city_id, postal_code, phone)
  SELECT i || ' Main St', 'District ' || (i % 7), 1 + i % 60, lpad(i::text, 5, '0'), '555-' || i
  FROM generate_series(1, 120) i;
INSERT INTO staff(first_name, last_name, address_id, email, store_id, username, password, picture)
  SELECT 'Staff', 'Member ' || i, i, 'staff' || i || '@example.com', i, 'staff' || i, NULL,
         decode(md5(i::text), 'hex')
  FROM generate_series(1, 2) i;
INSERT INTO store(manager_staff_id, address_id) SELECT i, i FROM generate_series(1, 2) i;
INSERT INTO customer(store_id, first_name, last_name, email, address_id, active)
  SELECT 1 + i % 2, 'Customer', 'Number ' || i, 'c' || i || '@example.com', 3 + i % 100, 1
  FROM generate_series(1, 300) i;
INSERT INTO actor(first_name, last_name) SELECT 'Actor', 'Ñame ' || i FROM generate_series(1, 80) i;
INSERT INTO category(name) SELECT 'Category ' || i FROM generate_series(1, 16) i;
INSERT INTO film(title, description, release_year, language_id, length, rating, special_features, fulltext)
  SELECT 'FILM ' || i, 'A thoughtful drama about database number ' || i, 2000 + i % 20, 1 + i % 6,
         60 + i % 120, (enum_range(NULL::mpaa_rating))[1 + i % 5],
         ARRAY['Trailers', 'Deleted Scenes'], to_tsvector('english', 'film ' || i || ' drama')
  FROM generate_series(1, 200) i;
INSERT INTO film_actor(actor_id, film_id) SELECT 1 + i % 80, 1 + i % 200 FROM generate_series(1, 200) i;
INSERT INTO film_category(film_id, category_id) SELECT i, 1 + i % 16 FROM generate_series(1, 200) i;
INSERT INTO film_embedding(film_id, embedding)
  SELECT i, ('[' || array_to_string(ARRAY(SELECT round((sin(i * j))::numeric, 4) FROM generate_series(1, 20) j), ',') || ']')::vector
  FROM generate_series(1, 200) i;
INSERT INTO inventory(film_id, store_id) SELECT 1 + i % 200, 1 + i % 2 FROM generate_series(1, 600) i;
INSERT INTO rental(rental_date, inventory_id, customer_id, return_date, staff_id)
  SELECT timestamptz '2022-01-01' + (i || ' hours')::interval, 1 + i % 600, 1 + i % 300,
         timestamptz '2022-01-03' + (i || ' hours')::interval, 1 + i % 2
  FROM generate_series(1, 2000) i;
INSERT INTO payment(customer_id, staff_id, rental_id, amount, payment_date)
  SELECT 1 + i % 300, 1 + i % 2, i, (i % 10) + 0.99, timestamptz '2022-01-05' + (i * 13 || ' hours')::interval
  FROM generate_series(1, 2000) i;
SET session_replication_role = origin;
REFRESH MATERIALIZED VIEW rental_by_category;
