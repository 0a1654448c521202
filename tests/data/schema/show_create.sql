CREATE TABLE `audit_trail` (
  `id` bigint(20) NOT NULL AUTO_INCREMENT,
  `table_name` varchar(64) NOT NULL,
  `action` varchar(10) NOT NULL,
  `row_ref` varchar(100) DEFAULT NULL,
  `at` datetime(6) NOT NULL DEFAULT current_timestamp(6),
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `counters` (
  `name` varchar(30) NOT NULL,
  `value` bigint(20) NOT NULL DEFAULT 0,
  PRIMARY KEY (`name`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `customers` (
  `id` int(10) unsigned NOT NULL AUTO_INCREMENT,
  `email` varchar(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,
  `name` varchar(100) DEFAULT NULL,
  `status` enum('active','closed') NOT NULL DEFAULT 'active',
  `flags` set('vip','staff') NOT NULL DEFAULT '',
  `country` char(2) NOT NULL DEFAULT 'FR',
  `born` year(4) DEFAULT NULL,
  `verified` tinyint(1) NOT NULL DEFAULT 0,
  `perms` bit(8) NOT NULL DEFAULT b'101',
  `balance` decimal(10,2) NOT NULL DEFAULT 0.00,
  `token` char(36) NOT NULL DEFAULT uuid(),
  `created_at` timestamp NOT NULL DEFAULT current_timestamp(),
  `updated_at` timestamp NULL DEFAULT NULL ON UPDATE current_timestamp(),
  PRIMARY KEY (`id`),
  UNIQUE KEY `uq_customers_email` (`email`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `order_lines` (
  `tenant_id` int(11) NOT NULL,
  `order_id` bigint(20) unsigned NOT NULL,
  `line_no` tinyint(3) unsigned NOT NULL,
  `sku` varchar(20) NOT NULL,
  `amount` double NOT NULL DEFAULT 0,
  PRIMARY KEY (`tenant_id`,`order_id`,`line_no`),
  CONSTRAINT `fk_lines_order` FOREIGN KEY (`tenant_id`, `order_id`) REFERENCES `orders` (`tenant_id`, `order_id`) ON DELETE CASCADE ON UPDATE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `orders` (
  `tenant_id` int(11) NOT NULL,
  `order_id` bigint(20) unsigned NOT NULL,
  `customer_id` int(10) unsigned DEFAULT NULL,
  `ext_ref` varchar(40) DEFAULT NULL,
  `qty` smallint(6) NOT NULL DEFAULT 1,
  `price` decimal(10,2) NOT NULL,
  `total` decimal(12,2) GENERATED ALWAYS AS (`qty` * `price`) STORED,
  `label` varchar(60) GENERATED ALWAYS AS (concat('order-',`order_id`)) VIRTUAL,
  `note` text DEFAULT NULL,
  `ordered_on` date NOT NULL DEFAULT curdate(),
  `changed_at` datetime(6) NOT NULL DEFAULT current_timestamp(6) ON UPDATE current_timestamp(6),
  PRIMARY KEY (`tenant_id`,`order_id`),
  UNIQUE KEY `uq_orders_ext` (`tenant_id`,`ext_ref`),
  KEY `ix_orders_customer` (`customer_id`),
  CONSTRAINT `fk_orders_customer` FOREIGN KEY (`customer_id`) REFERENCES `customers` (`id`) ON DELETE SET NULL ON UPDATE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `payments` (
  `id` int(11) NOT NULL,
  `customer_id` int(10) unsigned NOT NULL,
  `paid` binary(16) DEFAULT NULL,
  `memo` varchar(20) DEFAULT 'it''s',
  PRIMARY KEY (`id`),
  KEY `fk_payments_customer` (`customer_id`),
  CONSTRAINT `fk_payments_customer` FOREIGN KEY (`customer_id`) REFERENCES `customers` (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE DEFINER=`root`@`127.0.0.1` TRIGGER customers_bd BEFORE DELETE ON customers FOR EACH ROW INSERT INTO audit_trail (table_name, action, row_ref) VALUES ('customers', 'delete', OLD.email);

CREATE DEFINER=`root`@`127.0.0.1` TRIGGER order_lines_ai AFTER INSERT ON order_lines FOR EACH ROW BEGIN
  INSERT INTO audit_trail (table_name, action, row_ref) VALUES ('order_lines', 'insert', NEW.sku);
  UPDATE counters SET value = value + 1 WHERE name = 'lines';
END;

CREATE DEFINER=`root`@`127.0.0.1` TRIGGER orders_au AFTER UPDATE ON orders FOR EACH ROW INSERT INTO audit_trail (table_name, action, row_ref) VALUES ('orders', 'update', CONCAT(NEW.tenant_id, '/', NEW.order_id));

CREATE DEFINER=`root`@`127.0.0.1` TRIGGER orders_bi BEFORE INSERT ON orders FOR EACH ROW SET NEW.note = COALESCE(NEW.note, 'none');
