"""The response centre's FHIR R4 read API, without its HTTP routes (`alerts.console.fhir_api`).

    resources   pure builders: CapabilityStatement, Patient, Observation (the archive's builders),
                Flag (an alert episode), Bundle searchset, OperationOutcome
    records     pure builders: Device, Questionnaire, QuestionnaireResponse
    search      the search parameters, parsed and checked (`SearchError`: a 400 with what to fix)
    source      the database reads behind them, through the owning packages' read modules
    export      the bulk export's jobs and their NDJSON files

docs/fhir-api.md is the integrators' page.
"""
