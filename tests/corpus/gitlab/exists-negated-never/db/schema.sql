CREATE TABLE orders (id int);
CREATE TABLE users (id int);
