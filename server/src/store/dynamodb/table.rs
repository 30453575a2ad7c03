//! Table set-up: `init-table` creates the table, `serve` checks it.
//!
//! Table: `userId` (S, HASH) + `noteId` (S, RANGE), on-demand billing, TTL
//! on `expiresAt` (idempotency records expire; notes carry no `expiresAt`).

use std::{collections::HashMap, time::Duration};

use aws_sdk_dynamodb::{
    error::ProvideErrorMetadata,
    types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        TableDescription, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
    },
};

use super::{
    DynamoStore,
    error::{map_sdk_error, observed},
    item::{EXPIRES_AT_ATTR, NOTE_ID_ATTR, OWNER_ATTR},
};
use crate::store::StoreError;

fn string_attribute(name: &str) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .expect("name and type are set")
}

fn key_element(name: &str, key_type: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(key_type)
        .build()
        .expect("name and type are set")
}

impl DynamoStore {
    /// Creates the table if it is missing (on-demand billing, TTL on
    /// `expiresAt`) and waits until it is ACTIVE. Safe to run twice.
    pub async fn init_table(&self, wait: Duration) -> Result<(), StoreError> {
        let created = observed(
            "CreateTable",
            self.client
                .create_table()
                .table_name(&self.table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(string_attribute(OWNER_ATTR))
                .attribute_definitions(string_attribute(NOTE_ID_ATTR))
                .key_schema(key_element(OWNER_ATTR, KeyType::Hash))
                .key_schema(key_element(NOTE_ID_ATTR, KeyType::Range))
                .send(),
        )
        .await;
        match created {
            Ok(_) => tracing::info!(table = %self.table, "table created"),
            Err(err) if err.code() == Some("ResourceInUseException") => {
                tracing::info!(table = %self.table, "table exists")
            }
            Err(err) => return Err(map_sdk_error(err, &self.table)),
        }
        self.wait_until_active(wait).await?;
        let ttl = observed(
            "UpdateTimeToLive",
            self.client
                .update_time_to_live()
                .table_name(&self.table)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .attribute_name(EXPIRES_AT_ATTR)
                        .enabled(true)
                        .build()
                        .map_err(|e| {
                            StoreError::Internal("TTL specification".into(), Some(Box::new(e)))
                        })?,
                )
                .send(),
        )
        .await;
        if let Err(err) = ttl {
            // Already enabled answers ValidationException; either way notes work without it.
            tracing::info!(table = %self.table, code = ?err.code(), "TTL on expiresAt not changed");
        }
        self.check_table().await
    }

    async fn wait_until_active(&self, wait: Duration) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let table = self.describe().await?;
            if table.table_status() == Some(&TableStatus::Active) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(StoreError::Internal(
                    format!(
                        "table {:?} did not become ACTIVE within {wait:?}",
                        self.table
                    ),
                    None,
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Checks that TTL is enabled (or being enabled) on `expiresAt`, so
    /// idempotency records expire.
    pub async fn check_ttl(&self) -> Result<(), StoreError> {
        let out = observed(
            "DescribeTimeToLive",
            self.client
                .describe_time_to_live()
                .table_name(&self.table)
                .send(),
        )
        .await
        .map_err(|e| map_sdk_error(e, &self.table))?;
        let ttl = out.time_to_live_description();
        let status = ttl.and_then(|t| t.time_to_live_status());
        let attribute = ttl.and_then(|t| t.attribute_name());
        let enabled = matches!(
            status,
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        );
        if !enabled || attribute != Some(EXPIRES_AT_ATTR) {
            return Err(StoreError::Internal(
                format!(
                    "table {:?} has TTL {status:?} on {attribute:?}; expected it enabled on {EXPIRES_AT_ATTR:?} (run `notes-server init-table`)",
                    self.table
                ),
                None,
            ));
        }
        Ok(())
    }

    /// DescribeTable of the table.
    async fn describe(&self) -> Result<TableDescription, StoreError> {
        observed(
            "DescribeTable",
            self.client.describe_table().table_name(&self.table).send(),
        )
        .await
        .map_err(|e| map_sdk_error(e, &self.table))?
        .table
        .ok_or_else(|| StoreError::Internal("DescribeTable returned no table".into(), None))
    }

    /// Checks that the table exists with the expected key schema.
    pub async fn check_table(&self) -> Result<(), StoreError> {
        let table = self.describe().await?;
        let schema: Vec<(&str, &KeyType)> = table
            .key_schema()
            .iter()
            .map(|k| (k.attribute_name(), k.key_type()))
            .collect();
        let types: HashMap<&str, &ScalarAttributeType> = table
            .attribute_definitions()
            .iter()
            .map(|a| (a.attribute_name(), a.attribute_type()))
            .collect();
        let expected = [
            (OWNER_ATTR, &KeyType::Hash),
            (NOTE_ID_ATTR, &KeyType::Range),
        ];
        let string_keys = [OWNER_ATTR, NOTE_ID_ATTR]
            .iter()
            .all(|k| types.get(k) == Some(&&ScalarAttributeType::S));
        if schema != expected || !string_keys {
            return Err(StoreError::Internal(
                format!(
                    "table {:?} has key schema {schema:?}; expected userId (S, HASH) and noteId (S, RANGE)",
                    self.table
                ),
                None,
            ));
        }
        Ok(())
    }
}
