-- Creates the two databases and their owners (each service migrates its own database).
CREATE ROLE linkd_command LOGIN;
CREATE ROLE linkd_projection LOGIN;
CREATE DATABASE linkd_command OWNER linkd_command;
CREATE DATABASE linkd_projection OWNER linkd_projection;
