// Starts Swagger UI on the page's one element. Kept out of the HTML so that the page's
// Content-Security-Policy can forbid inline scripts.
"use strict";
(function () {
  const element = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: element.dataset.openapiUrl,
    domNode: element,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    // The online validator badge would send the document to a third party.
    validatorUrl: null,
  });
})();
