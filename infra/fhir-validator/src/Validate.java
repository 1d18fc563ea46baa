// One long-lived FHIR R4 validator for the tests (tests/support/fhir_validator.py).
//
// Reads one request per line on stdin: a JSON object {"profile": "<canonical url or empty>",
// "resource": {...}} and answers one line on stdout: {"issues": [{"severity": "...", "location":
// "...", "message": "..."}, ...]}. Starting the validator takes seconds (it loads the R4
// definitions and the vital-signs profiles); each validation after that takes milliseconds, so
// the tests start it once per session. "ready" on stdout says it has loaded.
// The profile line "!register" instead adds the resource that follows (a Questionnaire, a
// profile) to what the validator knows, so later resources are checked against it.
//
// Terminology: no terminology server. UCUM, BCP-47, MIME types and the like are checked by HAPI's
// common code systems; the value sets of the base specification are checked in memory; LOINC is
// not loaded (the profiles' fixed LOINC codes are still checked as patterns).

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationOptions;
import ca.uhn.fhir.validation.ValidationResult;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.r4.model.Questionnaire;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.PrePopulatedValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;

public final class Validate {
  public static void main(String[] args) throws Exception {
    FhirContext ctx = FhirContext.forR4();
    PrePopulatedValidationSupport registered = new PrePopulatedValidationSupport(ctx);
    // Questionnaires by canonical url: the pre-populated support keeps conformance resources only.
    Map<String, IBaseResource> questionnaires = new ConcurrentHashMap<>();
    IValidationSupport byUrl =
        new IValidationSupport() {
          @Override
          public FhirContext getFhirContext() {
            return ctx;
          }

          @Override
          public <T extends IBaseResource> T fetchResource(Class<T> type, String uri) {
            IBaseResource found = uri == null ? null : questionnaires.get(uri.split("\\|")[0]);
            return found != null && (type == null || type.isInstance(found)) ? (T) found : null;
          }
        };
    ValidationSupportChain chain =
        new ValidationSupportChain(
            byUrl,
            registered,
            new DefaultProfileValidationSupport(ctx),
            new CommonCodeSystemsTerminologyService(ctx),
            new InMemoryTerminologyServerValidationSupport(ctx),
            new SnapshotGeneratingValidationSupport(ctx));
    FhirInstanceValidator module = new FhirInstanceValidator(chain);
    module.setNoTerminologyChecks(false);
    FhirValidator validator = ctx.newValidator();
    validator.registerValidatorModule(module);
    PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
    // Warm up: the first validation loads the definitions.
    validator.validateWithResult("{\"resourceType\":\"Basic\",\"code\":{\"text\":\"warm-up\"}}");
    out.println("ready");
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    String profileLine;
    // Two lines per request: the profile (empty: base only), then the resource as one JSON line.
    while ((profileLine = in.readLine()) != null) {
      String resource = in.readLine();
      if (resource == null) {
        break;
      }
      StringBuilder answer = new StringBuilder("{\"issues\":[");
      try {
        if (profileLine.strip().equals("!register")) {
          IBaseResource parsed = ctx.newJsonParser().parseResource(resource);
          if (parsed instanceof Questionnaire q) {
            questionnaires.put(q.getUrl(), q);
          } else {
            registered.addResource(parsed);
          }
          out.println("{\"issues\":[]}");
          continue;
        }
        ValidationOptions options = new ValidationOptions();
        if (!profileLine.isBlank()) {
          options.addProfile(profileLine.strip());
        }
        ValidationResult result = validator.validateWithResult(resource, options);
        boolean first = true;
        for (SingleValidationMessage m : result.getMessages()) {
          if (!first) {
            answer.append(',');
          }
          first = false;
          answer.append("{\"severity\":").append(quote(String.valueOf(m.getSeverity())));
          answer.append(",\"location\":").append(quote(String.valueOf(m.getLocationString())));
          answer.append(",\"message\":").append(quote(String.valueOf(m.getMessage()))).append('}');
        }
      } catch (Exception e) {
        answer.setLength(0);
        answer.append("{\"issues\":[{\"severity\":\"FATAL\",\"location\":\"\",\"message\":");
        answer.append(quote("the validator failed: " + e)).append('}');
      }
      out.println(answer.append("]}"));
    }
  }

  private static String quote(String s) {
    StringBuilder b = new StringBuilder("\"");
    for (char c : s.toCharArray()) {
      switch (c) {
        case '"' -> b.append("\\\"");
        case '\\' -> b.append("\\\\");
        case '\n' -> b.append("\\n");
        case '\r' -> b.append("\\r");
        case '\t' -> b.append("\\t");
        default -> {
          if (c < 0x20) {
            b.append(String.format("\\u%04x", (int) c));
          } else {
            b.append(c);
          }
        }
      }
    }
    return b.append('"').toString();
  }
}
